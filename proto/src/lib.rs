//! kvmlet wire types.

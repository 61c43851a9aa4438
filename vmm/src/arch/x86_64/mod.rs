//! x86_64 specifics: memory layout, CPU state at entry, boot parameters.
pub mod layout;

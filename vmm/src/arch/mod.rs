//! Architecture support. kvmlet runs x86_64 guests only.
pub mod x86_64;
pub use self::x86_64::layout;

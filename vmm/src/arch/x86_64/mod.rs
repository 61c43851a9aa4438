//! x86_64 specifics: memory layout, CPU state at entry, boot parameters.
pub mod boot_params;
pub mod cpuid;
pub mod interrupts;
pub mod layout;
pub mod msr;
pub mod regs;

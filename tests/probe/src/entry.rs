//! The only ring-0 code: enter long mode (PVH) or take it as given (64-bit
//! Linux entry), install our own user-accessible identity map, GDT, TSS and
//! IDT, enable SSE, and `iretq` to ring 3 with IOPL=3; and the idle path
//! (`idle`: HLT until the APIC timer fires). Guest ring-0 code is emulated
//! instruction by instruction on nested KVM, so this stays a few dozen
//! instructions; every loop runs in ring 3.

use core::arch::global_asm;

/// Page-table entry flags: present, writable, user-accessible.
const PTE_PRESENT_RW_USER: u64 = 0x7;
/// A 2 MiB page.
const PTE_HUGE: u64 = 0x80;

#[repr(C, align(4096))]
pub struct PageTable(pub [u64; 512]);

#[repr(C, align(4096))]
pub struct PageDirectories(pub [u64; 2048]);

/// Four page directories mapping 0..4 GiB with 2 MiB user pages: pure data,
/// computed at compile time so ring 0 only links the tables together.
const fn identity_directories() -> PageDirectories {
    let mut pd = [0u64; 2048];
    let mut i = 0;
    while i < 2048 {
        pd[i] = ((i as u64) << 21) | PTE_HUGE | PTE_PRESENT_RW_USER;
        i += 1;
    }
    PageDirectories(pd)
}

#[no_mangle]
#[link_section = ".data.pagetables"]
pub static mut PROBE_PML4: PageTable = PageTable([0; 512]);
#[no_mangle]
#[link_section = ".data.pagetables"]
pub static mut PROBE_PDPT: PageTable = PageTable([0; 512]);
#[no_mangle]
#[link_section = ".data.pagetables"]
pub static mut PROBE_PD: PageDirectories = identity_directories();

/// GDT: null, kernel code64 (0x08), kernel data (0x10), user data (0x18),
/// user code64 (0x20), kernel code32 (0x28, only for the PVH far jump), and
/// the 16-byte TSS descriptor (0x30) whose base the entry code fills in.
#[no_mangle]
#[link_section = ".data"]
pub static mut PROBE_GDT: [u64; 8] = [
    0,
    0x00af_9a00_0000_ffff,
    0x00cf_9200_0000_ffff,
    0x00cf_f200_0000_ffff,
    0x00af_fa00_0000_ffff,
    0x00cf_9a00_0000_ffff,
    0x0000_8900_0000_2068, // present, 64-bit TSS, limit: 104 bytes + I/O bitmap
    0,
];

/// The TSS: RSP0, the stack `idle`'s interrupt gate switches to, and an I/O
/// permission bitmap that allows every port to ring 3 (on this host, ring 3
/// reaches ports through the bitmap, whatever IOPL says).
#[repr(C, packed)]
pub struct Tss {
    reserved0: u32,
    pub rsp0: u64,
    unused: [u8; 90],
    io_map_base: u16,
    io_map: [u8; 8192 + 1],
}

/// The GDT's TSS limit (0x2068) is the size of this struct minus one.
const _: () = assert!(core::mem::size_of::<Tss>() - 1 == 0x2068);

#[no_mangle]
#[link_section = ".data"]
pub static mut PROBE_TSS: Tss = Tss {
    reserved0: 0,
    rsp0: 0,
    unused: [0; 90],
    io_map_base: 104,
    io_map: {
        let mut map = [0; 8192 + 1];
        map[8192] = 0xff; // the bitmap's required terminator
        map
    },
};

#[repr(C, packed)]
pub struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// The GDT's base is filled in by the entry code: a static's address is not
/// a constant integer in Rust.
#[no_mangle]
#[link_section = ".data"]
pub static mut PROBE_GDTR: DescriptorPointer =
    DescriptorPointer { limit: (core::mem::size_of::<[u64; 8]>() - 1) as u16, base: 0 };

/// The exception ring 3 raises (#UD) to halt, and the vectors that end the
/// halt: the local APIC timer's and the IOAPIC-routed device interrupt's
/// (`route_interrupt`). Only their gates are filled in; any other exception
/// finds a non-present gate and ends in a triple fault, which the VMM
/// reports.
pub const IDLE_VECTOR: usize = 6;
pub const IDLE_TIMER_VECTOR: usize = 0x20;
pub const DEVICE_VECTOR: usize = 0x21;

#[repr(C, align(16))]
pub struct Idt(pub [u64; 2 * (DEVICE_VECTOR + 1)]);

#[no_mangle]
#[link_section = ".data"]
pub static mut PROBE_IDT: Idt = Idt([0; 2 * (DEVICE_VECTOR + 1)]);

/// An empty IDT, for ending in a triple fault on purpose.
#[no_mangle]
#[link_section = ".data"]
pub static mut PROBE_NO_IDT: DescriptorPointer = DescriptorPointer { limit: 0, base: 0 };

/// The IDT's base is filled in by the entry code, as the GDT's.
#[no_mangle]
#[link_section = ".data"]
pub static mut PROBE_IDTR: DescriptorPointer =
    DescriptorPointer { limit: (core::mem::size_of::<Idt>() - 1) as u16, base: 0 };

#[repr(C, align(16))]
pub struct Stack(pub [u8; 4096 * 16]);

/// Ring-0 stack: only the five words `iretq` pops.
#[no_mangle]
pub static mut PROBE_STACK0: Stack = Stack([0; 4096 * 16]);

global_asm!(
    r#"
    .set PTE_FLAGS, 7

    /* Xen ELF note: XEN_ELFNOTE_PHYS32_ENTRY (18) -> pvh_start32. */
    .pushsection .note.Xen, "a"
    .balign 4
    .long 4              /* name size */
    .long 4              /* descriptor size */
    .long 18             /* type */
    .asciz "Xen"
    .long pvh_start32
    .popsection

    /* PVH: 32-bit protected mode, paging off, EBX = hvm_start_info. */
    .pushsection .boot32, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    mov edi, ebx
    mov eax, offset PROBE_PDPT
    or eax, PTE_FLAGS
    mov dword ptr [PROBE_PML4], eax
    mov eax, offset PROBE_PD
    or eax, PTE_FLAGS
    mov dword ptr [PROBE_PDPT], eax
    add eax, 0x1000
    mov dword ptr [PROBE_PDPT + 8], eax
    add eax, 0x1000
    mov dword ptr [PROBE_PDPT + 16], eax
    add eax, 0x1000
    mov dword ptr [PROBE_PDPT + 24], eax
    mov eax, offset PROBE_PML4
    mov cr3, eax
    mov eax, cr4
    or eax, 0x20                 /* PAE */
    mov cr4, eax
    mov ecx, 0xc0000080          /* EFER */
    rdmsr
    or eax, 0x100                /* LME */
    wrmsr
    mov eax, cr0
    or eax, 0x80000001           /* PG | PE */
    mov cr0, eax
    mov dword ptr [PROBE_GDTR + 2], offset PROBE_GDT
    lgdt [PROBE_GDTR]
    .byte 0xea                   /* ljmp 0x08:pvh_long_mode, into the 64-bit code segment */
    .long pvh_long_mode
    .word 0x08
    .code64
pvh_long_mode:
    mov r15d, edi                /* boot info: hvm_start_info */
    mov r14d, 1                  /* protocol: PVH */
    jmp common64
    .popsection

    /* 64-bit Linux boot protocol: long mode, RSI = zero page. */
    .pushsection .entry64, "ax"
    .globl entry64
entry64:
    cli
    mov r15, rsi                 /* boot info: boot_params */
    xor r14d, r14d               /* protocol: Linux */
common64:
    lea rsp, [rip + PROBE_STACK0 + 4096 * 16]
    lea rax, [rip + PROBE_PDPT]
    or rax, PTE_FLAGS
    mov [rip + PROBE_PML4], rax
    lea rax, [rip + PROBE_PD]
    or rax, PTE_FLAGS
    mov [rip + PROBE_PDPT], rax
    add rax, 0x1000
    mov [rip + PROBE_PDPT + 8], rax
    add rax, 0x1000
    mov [rip + PROBE_PDPT + 16], rax
    add rax, 0x1000
    mov [rip + PROBE_PDPT + 24], rax
    lea rax, [rip + PROBE_PML4]
    mov cr3, rax
    lea rax, [rip + PROBE_GDT]
    mov [rip + PROBE_GDTR + 2], rax
    lgdt [rip + PROBE_GDTR]
    lea rax, [rip + PROBE_IDT]
    mov [rip + PROBE_IDTR + 2], rax
    lidt [rip + PROBE_IDTR]
    lea rax, [rip + PROBE_STACK0 + 4096 * 16]
    mov [rip + PROBE_TSS + 4], rax
    lea rax, [rip + PROBE_TSS]
    mov [rip + PROBE_GDT + 48 + 2], ax      /* TSS base 15:0 */
    shr rax, 16
    mov [rip + PROBE_GDT + 48 + 4], al      /* base 23:16 */
    mov [rip + PROBE_GDT + 48 + 7], ah      /* base 31:24 */
    mov ax, 0x30
    ltr ax
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rax, cr0
    and rax, ~0xc                /* clear EM and TS: SSE allowed */
    or rax, 0x2                  /* MP */
    mov cr0, rax
    mov rax, cr4
    or rax, 0x600                /* OSFXSR | OSXMMEXCPT */
    mov cr4, rax
    push 0x1b                    /* SS: user data, RPL 3 */
    lea rax, [rip + PROBE_STACK3 + 4096 * 16]
    push rax                     /* RSP */
    push 0x3002                  /* RFLAGS: IOPL 3, interrupts off */
    push 0x23                    /* CS: user code, RPL 3 */
    lea rax, [rip + ring3_start]
    push rax                     /* RIP */
    iretq
    .popsection

    /* Ring 3 from here on: native speed. Zero .bss (the ring-3 stack lives
       there but holds nothing yet), then call Rust. */
    .text
ring3_start:
    mov ax, 0x1b
    mov ds, ax
    mov es, ax
    lea rdi, [rip + __bss_start]
    lea rcx, [rip + __bss_end]
    sub rcx, rdi
    xor eax, eax
    rep stosb
    mov rdi, r15
    mov rsi, r14
    call probe_main
    ud2

    /* `idle` traps into ring 0 with a UD2 (this host refuses INT n and
       SYSCALL from ring 3, but delivers exceptions through the IDT). */
    .globl probe_idle_trap
probe_idle_trap:
    ud2
    ret

    /* Ring 0, the #UD gate, on the TSS's RSP0 stack: the UD2 above halts
       until an interrupt, then returns after it to ring 3 with its own
       RFLAGS (interrupts off). STI's one-instruction shadow lets no
       interrupt in before the HLT, and one already pending ends the HLT at
       once, so no wake-up is lost. Any other #UD is fatal, as it was. */
    .globl probe_idle_entry
probe_idle_entry:
    push rax
    lea rax, [rip + probe_idle_trap]
    cmp [rsp + 8], rax
    pop rax
    jne 1f
    add qword ptr [rsp], 2
    sti
    hlt
    cli
    iretq
1:
    lidt [rip + PROBE_NO_IDT]
    ud2                          /* no IDT: a triple fault, which the VMM reports */

    /* The local APIC timer's interrupt, or the routed device interrupt,
       taken in ring 0 during the HLT above: acknowledge it (EOI) and return
       to after the HLT. Ring 3 then looks at the device itself. */
    .globl probe_idle_timer
probe_idle_timer:
    push rax
    mov eax, 0xfee000b0          /* local APIC EOI register */
    mov dword ptr [rax], 0
    pop rax
    iretq
"#
);

/// Ring-3 stack (in .bss).
#[no_mangle]
pub static mut PROBE_STACK3: Stack = Stack([0; 4096 * 16]);

extern "C" {
    fn probe_idle_trap();
    fn probe_idle_entry();
    fn probe_idle_timer();
}

/// The local APIC (xAPIC MMIO, mapped user-accessible like all memory).
const LAPIC: u64 = 0xfee0_0000;
const LAPIC_ID: u64 = LAPIC + 0x20;
const LAPIC_SPURIOUS: u64 = LAPIC + 0xf0;
const LAPIC_LVT_TIMER: u64 = LAPIC + 0x320;
const LAPIC_LVT_LINT0: u64 = LAPIC + 0x350;
const LAPIC_LVT_LINT1: u64 = LAPIC + 0x360;
const LAPIC_LVT_ERROR: u64 = LAPIC + 0x370;
const LAPIC_TIMER_INITIAL: u64 = LAPIC + 0x380;
const LAPIC_TIMER_DIVIDE: u64 = LAPIC + 0x3e0;
const LVT_MASKED: u32 = 1 << 16;

/// A present 64-bit interrupt gate (DPL 0) to `handler` in the kernel code
/// segment.
fn gate(handler: unsafe extern "C" fn()) -> [u64; 2] {
    const PRESENT_INTERRUPT_GATE: u64 = 0x8e;
    let offset = handler as *const () as usize as u64;
    [(offset & 0xffff) | (0x08 << 16) | (PRESENT_INTERRUPT_GATE << 40) | ((offset >> 16) & 0xffff) << 48, offset >> 32]
}

/// Fills in the idle gates and sets up the local APIC (once).
///
/// SAFETY: one vCPU runs this code; the APIC registers are MMIO at their
/// fixed address.
unsafe fn arm_idle() {
    static mut ARMED: bool = false;
    if ARMED {
        return;
    }
    let idt = &mut *core::ptr::addr_of_mut!(PROBE_IDT.0);
    idt[2 * IDLE_VECTOR..][..2].copy_from_slice(&gate(probe_idle_entry));
    idt[2 * IDLE_TIMER_VECTOR..][..2].copy_from_slice(&gate(probe_idle_timer));
    idt[2 * DEVICE_VECTOR..][..2].copy_from_slice(&gate(probe_idle_timer));
    // Only the timer and the routed device may interrupt: KVM wires the
    // 8259 PIC to LINT0 of the boot CPU, and the probe has no gate for its
    // vectors.
    for lvt in [LAPIC_LVT_LINT0, LAPIC_LVT_LINT1, LAPIC_LVT_ERROR] {
        core::ptr::write_volatile(lvt as *mut u32, LVT_MASKED);
    }
    core::ptr::write_volatile(LAPIC_SPURIOUS as *mut u32, 0x1ff); // enabled, spurious vector 0xff
    core::ptr::write_volatile(LAPIC_TIMER_DIVIDE as *mut u32, 0xb); // divide by 1
    core::ptr::write_volatile(LAPIC_LVT_TIMER as *mut u32, IDLE_TIMER_VECTOR as u32); // one-shot
    ARMED = true;
}

/// Routes IOAPIC input `gsi` (edge, active high, as the DSDT's GED
/// `Interrupt` says) to `DEVICE_VECTOR` on this CPU, so that a halted
/// `idle(0)` ends when the device raises it, as a kernel's would.
pub fn route_interrupt(ioapic: u64, gsi: u32) {
    const IOREGSEL: u64 = 0x00;
    const IOWIN: u64 = 0x10;
    // SAFETY: as `idle`; the IOAPIC's registers are MMIO at the address the
    // MADT gives.
    unsafe {
        arm_idle();
        let apic_id = core::ptr::read_volatile(LAPIC_ID as *const u32) >> 24;
        let select = |register: u32| core::ptr::write_volatile((ioapic + IOREGSEL) as *mut u32, register);
        let write = |value: u32| core::ptr::write_volatile((ioapic + IOWIN) as *mut u32, value);
        // Redirection entry `gsi`: high word (destination) first, then the
        // low word (vector, fixed delivery, physical, edge, high, unmasked).
        select(0x11 + 2 * gsi);
        write(apic_id << 24);
        select(0x10 + 2 * gsi);
        write(DEVICE_VECTOR as u32);
    }
}

/// Sleeps about `nanos` (KVM's APIC timer counts at 1 GHz with divide by 1)
/// by halting the vCPU, so an idle probe costs the host no CPU, as an idle
/// kernel would not; `nanos == 0` halts until a routed device interrupt
/// (`route_interrupt`). A tiny ring-0 detour: the HLT and an EOI.
pub fn idle(nanos: u32) {
    // SAFETY: one vCPU runs this code; the gates are written before they can
    // be used, and the APIC registers are MMIO at their fixed address.
    unsafe {
        arm_idle();
        core::ptr::write_volatile(LAPIC_TIMER_INITIAL as *mut u32, nanos);
        probe_idle_trap();
    }
}

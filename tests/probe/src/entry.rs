//! The only ring-0 code: enter long mode (PVH) or take it as given (64-bit
//! Linux entry), install our own user-accessible identity map, GDT and an
//! empty IDT, enable SSE, and `iretq` to ring 3 with IOPL=3. Guest ring-0
//! code is emulated instruction by instruction on nested KVM, so this stays
//! a few dozen instructions; every loop runs in ring 3.

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
/// user code64 (0x20), kernel code32 (0x28, only for the PVH far jump).
#[no_mangle]
#[link_section = ".data"]
pub static PROBE_GDT: [u64; 6] = [
    0,
    0x00af_9a00_0000_ffff,
    0x00cf_9200_0000_ffff,
    0x00cf_f200_0000_ffff,
    0x00af_fa00_0000_ffff,
    0x00cf_9a00_0000_ffff,
];

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
    DescriptorPointer { limit: (core::mem::size_of::<[u64; 6]>() - 1) as u16, base: 0 };

/// Limit 0: any exception is a triple fault, which the VMM reports.
#[no_mangle]
#[link_section = ".data"]
pub static mut PROBE_IDTR: DescriptorPointer = DescriptorPointer { limit: 0, base: 0 };

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
    lidt [rip + PROBE_IDTR]
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
"#
);

/// Ring-3 stack (in .bss).
#[no_mangle]
pub static mut PROBE_STACK3: Stack = Stack([0; 4096 * 16]);

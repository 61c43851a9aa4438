//! The memory functions the compiler calls. The host target's compiler_builtins
//! does not export them, and there is no libc here. `rep movsb`/`rep stosb`
//! run natively in ring 3 and cannot be turned back into calls to themselves.

use core::arch::asm;

#[no_mangle]
unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid and disjoint.
    unsafe {
        asm!("rep movsb", inout("rdi") dest => _, inout("rsi") src => _, inout("rcx") n => _, options(nostack, preserves_flags))
    };
    dest
}

#[no_mangle]
unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize) <= (src as usize) || (dest as usize) >= (src as usize + n) {
        // SAFETY: a forward copy is safe when dest does not start inside src.
        return unsafe { memcpy(dest, src, n) };
    }
    // Overlapping with dest after src: copy backwards with the direction flag set.
    // SAFETY: the caller guarantees both ranges are valid; DF is restored.
    unsafe {
        asm!(
            "std",
            "rep movsb",
            "cld",
            inout("rdi") dest.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _,
            inout("rcx") n => _,
            options(nostack)
        )
    };
    dest
}

#[no_mangle]
unsafe extern "C" fn memset(dest: *mut u8, value: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid.
    unsafe {
        asm!("rep stosb", inout("rdi") dest => _, inout("rcx") n => _, in("al") value as u8, options(nostack, preserves_flags))
    };
    dest
}

#[no_mangle]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller guarantees both ranges are valid; volatile keeps
        // the compiler from turning this loop into a call to memcmp.
        let (x, y) = unsafe { (core::ptr::read_volatile(a.add(i)), core::ptr::read_volatile(b.add(i))) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

#[no_mangle]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

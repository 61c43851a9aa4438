//! Kubernetes resource quantities, with the full grammar of
//! `k8s.io/apimachinery/pkg/api/resource`:
//!
//! ```text
//! quantity ::= [+|-] number suffix
//! number   ::= digits | digits "." | digits "." digits | "." digits
//! suffix   ::= "" | n | u | m | k | M | G | T | P | E     (decimal SI)
//!            | Ki | Mi | Gi | Ti | Pi | Ei                 (binary SI)
//!            | (e | E) [+|-] digits                        (decimal exponent)
//! ```
//!
//! Values are exact (no floating point): a quantity is digits × 10^a × 2^b,
//! converted to whole units by rounding up, as Kubernetes' `Value()` does.

/// Why a string is not a usable quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0:?} is not a quantity (a number with an optional suffix such as Mi, Gi, M, G, m or e9)")]
    Syntax(String),
    #[error("{0:?} is negative")]
    Negative(String),
    #[error("{0:?} is out of range")]
    OutOfRange(String),
}

/// An exact quantity: `digits × 10^exp10 × 2^exp2`, with its sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exact {
    negative: bool,
    digits: u128,
    exp10: i32,
    exp2: u32,
}

/// Largest decimal exponent accepted (Kubernetes stops at 10^18 × a few digits too).
const MAX_EXPONENT: i32 = 1000;

fn parse(text: &str) -> Result<Exact, QuantityError> {
    let syntax = || QuantityError::Syntax(text.to_string());
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'+') => (false, &text[1..]),
        Some(b'-') => (true, &text[1..]),
        _ => (false, text),
    };
    let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(syntax());
    }
    let mut digits: u128 = 0;
    for c in whole.chars().chain(fraction.chars()) {
        let digit = u128::from(c.to_digit(10).ok_or_else(syntax)?);
        digits = digits
            .checked_mul(10)
            .and_then(|d| d.checked_add(digit))
            .ok_or_else(|| QuantityError::OutOfRange(text.to_string()))?;
    }
    let mut exp10 = -i32::try_from(fraction.len()).map_err(|_| syntax())?;
    let mut exp2 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        s if s.starts_with(['e', 'E']) => {
            let exponent = &s[1..];
            let unsigned = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            let exponent: i32 = exponent.parse().map_err(|_| QuantityError::OutOfRange(text.to_string()))?;
            if exponent.abs() > MAX_EXPONENT {
                return Err(QuantityError::OutOfRange(text.to_string()));
            }
            exp10 += exponent;
        }
        _ => return Err(syntax()),
    }
    Ok(Exact { negative, digits, exp10, exp2 })
}

impl Exact {
    /// `ceil(value × 10^scale)`, or None when it does not fit.
    fn ceil_scaled(&self, scale: i32) -> Option<u128> {
        if self.digits == 0 {
            return Some(0);
        }
        let numerator = self.digits.checked_mul(1u128.checked_shl(self.exp2)?)?;
        let exponent = self.exp10 + scale;
        if exponent >= 0 {
            return numerator.checked_mul(10u128.checked_pow(u32::try_from(exponent).ok()?)?);
        }
        match 10u128.checked_pow(exponent.unsigned_abs()) {
            Some(denominator) => Some(numerator.div_ceil(denominator)),
            // Smaller than any unit, and not zero: one unit.
            None => Some(1),
        }
    }
}

/// `text` in whole units of 10^-scale (scale 0: units, 3: thousandths), rounded up.
fn whole(text: &str, scale: i32) -> Result<u64, QuantityError> {
    let exact = parse(text)?;
    if exact.negative && exact.digits != 0 {
        return Err(QuantityError::Negative(text.to_string()));
    }
    exact
        .ceil_scaled(scale)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| QuantityError::OutOfRange(text.to_string()))
}

/// Bytes in a quantity, rounded up to a whole byte.
pub fn bytes(quantity: &str) -> Result<u64, QuantityError> {
    whole(quantity, 0)
}

/// Whole MiB in a quantity, rounded down: what a capacity (`kvmlet.io/memory`,
/// `--memory-capacity`) offers, never more than it says.
pub fn capacity_mib(quantity: &str) -> Result<u64, QuantityError> {
    bytes(quantity).map(|b| b >> 20)
}

/// Thousandths of a CPU in a CPU quantity (`500m`, `2`, `1.5`), rounded up.
pub fn millicores(quantity: &str) -> Result<u64, QuantityError> {
    whole(quantity, 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_quantities_in_every_form() {
        assert_eq!(bytes("64M"), Ok(64_000_000));
        assert_eq!(bytes("128Mi"), Ok(128 << 20));
        assert_eq!(bytes("1Gi"), Ok(1 << 30));
        assert_eq!(bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(bytes("+64Mi"), Ok(64 << 20));
        assert_eq!(bytes("1e9"), Ok(1_000_000_000));
        assert_eq!(bytes("1E9"), Ok(1_000_000_000));
        assert_eq!(bytes("1.5e3"), Ok(1500));
        assert_eq!(bytes("15e-1"), Ok(2), "rounded up");
        assert_eq!(bytes(".5Ki"), Ok(512));
        assert_eq!(bytes("2."), Ok(2));
        assert_eq!(bytes("4096"), Ok(4096));
        assert_eq!(bytes("1E"), Ok(1_000_000_000_000_000_000), "E alone is exa");
        assert_eq!(bytes("1Ei"), Ok(1 << 60));
        assert_eq!(bytes("1500m"), Ok(2), "thousandths of a byte round up");
        assert_eq!(bytes("1n"), Ok(1));
        assert_eq!(bytes("0"), Ok(0));
        assert_eq!(bytes("-0"), Ok(0));
        assert_eq!(bytes("1e-2000"), Err(QuantityError::OutOfRange("1e-2000".into())));
    }

    #[test]
    fn bad_quantities_say_why() {
        for bad in ["", "lots", ".", "1.2.3M", "12Qi", "1e", "1e+", "1ee3", "M", "1 Gi", "--1", "1Mi ", "0x10"] {
            assert_eq!(bytes(bad), Err(QuantityError::Syntax(bad.into())), "{bad:?}");
        }
        assert_eq!(bytes("-1Mi"), Err(QuantityError::Negative("-1Mi".into())));
        assert_eq!(bytes("16Ei"), Err(QuantityError::OutOfRange("16Ei".into())));
        assert_eq!(bytes("1e30"), Err(QuantityError::OutOfRange("1e30".into())));
        assert_eq!(
            bytes("99999999999999999999999999999999999999999"),
            Err(QuantityError::OutOfRange("99999999999999999999999999999999999999999".into()))
        );
        assert!(bytes("lots").unwrap_err().to_string().starts_with("\"lots\" is not a quantity"));
    }

    #[test]
    fn cpu_quantities_in_millicores() {
        assert_eq!(millicores("2"), Ok(2000));
        assert_eq!(millicores("500m"), Ok(500));
        assert_eq!(millicores("1.5"), Ok(1500));
        assert_eq!(millicores("2500m"), Ok(2500));
        assert_eq!(millicores("1e1"), Ok(10_000));
        assert_eq!(millicores("100u"), Ok(1), "below a millicore rounds up");
        assert!(millicores("two").is_err());
        assert_eq!(millicores("-1"), Err(QuantityError::Negative("-1".into())));
    }
}

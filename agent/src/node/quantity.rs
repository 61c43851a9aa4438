//! Kubernetes resource quantities ("64M", "1Gi", "512Mi", "1e9") as bytes.

/// Bytes in `quantity`, or why it is not a byte count.
pub fn bytes(quantity: &str) -> Result<u64, String> {
    let q = quantity.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    if number.is_empty() || number.matches('.').count() > 1 {
        return Err(format!("{quantity:?} is not a quantity"));
    }
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => {
            let exponent: i32 = s[1..].parse().map_err(|_| format!("{quantity:?} is not a quantity"))?;
            10f64.powi(exponent)
        }
        "m" => return Err(format!("{quantity:?}: a byte count cannot be in thousandths")),
        _ => return Err(format!("{quantity:?} has an unknown suffix {suffix:?}")),
    };
    let value: f64 = number.parse().map_err(|_| format!("{quantity:?} is not a quantity"))?;
    let bytes = (value * multiplier).ceil();
    if !(0.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!("{quantity:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// Whole CPUs in a CPU quantity ("2", "500m" is 1: a vCPU is not divisible).
pub fn cpus(quantity: &str) -> Result<u64, String> {
    let q = quantity.trim();
    if let Some(milli) = q.strip_suffix('m') {
        let milli: u64 = milli.parse().map_err(|_| format!("{quantity:?} is not a CPU quantity"))?;
        return Ok(milli.div_ceil(1000));
    }
    let value: f64 = q.parse().map_err(|_| format!("{quantity:?} is not a CPU quantity"))?;
    if !(0.0..=1e6).contains(&value) {
        return Err(format!("{quantity:?} is out of range"));
    }
    Ok(value.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_quantities() {
        assert_eq!(bytes("64M").unwrap(), 64_000_000);
        assert_eq!(bytes("128Mi").unwrap(), 128 << 20);
        assert_eq!(bytes("1Gi").unwrap(), 1 << 30);
        assert_eq!(bytes("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(bytes("1e9").unwrap(), 1_000_000_000);
        assert_eq!(bytes("4096").unwrap(), 4096);
        assert!(bytes("").is_err());
        assert!(bytes("lots").is_err());
        assert!(bytes("12Qi").unwrap_err().contains("unknown suffix"));
        assert!(bytes("100m").unwrap_err().contains("thousandths"));
        assert!(bytes("1.2.3M").is_err());
    }

    #[test]
    fn cpu_quantities() {
        assert_eq!(cpus("2").unwrap(), 2);
        assert_eq!(cpus("500m").unwrap(), 1);
        assert_eq!(cpus("2500m").unwrap(), 3);
        assert!(cpus("two").is_err());
    }
}

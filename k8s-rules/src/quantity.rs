//! Resource quantities (`resource.Quantity`): `100m`, `1.5`, `64Mi`, `2e3`, read exactly into
//! integer milli-units. Floating point would make `1000m` and `1` differ by a rounding error, and
//! the QoS class, admission and scheduling all compare quantities for equality.
//!
//! Rounding follows apimachinery: `MilliValue()` and `Value()` round up, so `0.1m` is one
//! milli-unit and `1.5` bytes are two.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Sub};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// apimachinery's `ErrFormatWrong`.
    #[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")]
    Format,
    /// apimachinery's `ErrSuffix`.
    #[error("unable to parse quantity's suffix")]
    Suffix,
    #[error("quantity is too large")]
    TooLarge,
}

/// An amount in milli-units: `100m` is 100, `1` is 1000, `64Mi` is 64·2²⁰·1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Milli(pub i128);

/// The largest power of ten an `i128` holds.
const MAX_POW10: u32 = 38;

impl Milli {
    pub const ZERO: Milli = Milli(0);

    pub fn parse(s: &str) -> Result<Self, QuantityError> {
        parse(s.trim())
    }

    pub fn of(q: &Quantity) -> Result<Self, QuantityError> {
        Self::parse(&q.0)
    }

    /// `n` whole units.
    pub fn from_units(n: i128) -> Self {
        Milli(n.saturating_mul(1000))
    }

    pub fn milli(self) -> i128 {
        self.0
    }

    /// Whole units, rounded up (apimachinery's `Value()`): bytes of memory, cores of a CPU count.
    pub fn value(self) -> i128 {
        div_ceil(self.0, 1000)
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// As Kubernetes prints a decimal amount: `500m`, `2`.
    pub fn to_decimal_string(self) -> String {
        if self.0 % 1000 == 0 {
            (self.0 / 1000).to_string()
        } else {
            format!("{}m", self.0)
        }
    }

    /// As Kubernetes prints a binary amount (memory, storage): `64Mi`, `1Gi`, `1500`; fractions
    /// of a unit stay in milli-units.
    pub fn to_binary_string(self) -> String {
        if self.0 % 1000 != 0 {
            return format!("{}m", self.0);
        }
        let units = self.0 / 1000;
        for (suffix, shift) in [
            ("Ei", 60),
            ("Pi", 50),
            ("Ti", 40),
            ("Gi", 30),
            ("Mi", 20),
            ("Ki", 10),
        ] {
            let size = 1i128 << shift;
            if units != 0 && units % size == 0 {
                return format!("{}{suffix}", units / size);
            }
        }
        units.to_string()
    }
}

impl Add for Milli {
    type Output = Milli;
    fn add(self, o: Milli) -> Milli {
        Milli(self.0.saturating_add(o.0))
    }
}

impl AddAssign for Milli {
    fn add_assign(&mut self, o: Milli) {
        *self = *self + o;
    }
}

impl Sub for Milli {
    type Output = Milli;
    fn sub(self, o: Milli) -> Milli {
        Milli(self.0.saturating_sub(o.0))
    }
}

impl Sum for Milli {
    fn sum<I: Iterator<Item = Milli>>(iter: I) -> Milli {
        iter.fold(Milli::ZERO, Add::add)
    }
}

impl fmt::Display for Milli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_decimal_string())
    }
}

/// `quantity` in milli-units, or None when it does not parse (callers that must report the
/// error use [`Milli::parse`]).
pub fn milli(quantity: &str) -> Option<i128> {
    Milli::parse(quantity).ok().map(Milli::milli)
}

/// Division rounding towards positive infinity.
fn div_ceil(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d > 0 {
        q + 1
    } else {
        q
    }
}

/// The multiplier of a suffix: (power of two, power of ten).
fn suffix(s: &str) -> Result<(u32, i32), QuantityError> {
    Ok(match s {
        "" => (0, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        _ => {
            let exp = s
                .strip_prefix(['e', 'E'])
                .filter(|e| !e.is_empty())
                .ok_or(QuantityError::Suffix)?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(QuantityError::Suffix);
            }
            (0, exp.parse().map_err(|_| QuantityError::TooLarge)?)
        }
    })
}

fn parse(s: &str) -> Result<Milli, QuantityError> {
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let num_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix_text) = rest.split_at(num_end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(QuantityError::Format);
    }
    let (binary, decimal) = suffix(suffix_text)?;
    // The digits as one integer, with the decimal point moved into the exponent; trailing
    // fraction zeros are dropped so long but exact spellings do not overflow.
    let frac = frac.trim_end_matches('0');
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let mut mantissa: i128 = if digits.is_empty() {
        0
    } else if digits.len() > MAX_POW10 as usize {
        return Err(QuantityError::TooLarge);
    } else {
        digits.parse().map_err(|_| QuantityError::Format)?
    };
    mantissa = mantissa
        .checked_mul(1i128 << binary)
        .ok_or(QuantityError::TooLarge)?;
    // Milli-units: three more decimal places.
    let exp = i64::from(decimal) + 3 - frac.len() as i64;
    let value = if exp >= 0 {
        let p = u32::try_from(exp).map_err(|_| QuantityError::TooLarge)?;
        if mantissa == 0 {
            0
        } else {
            10i128
                .checked_pow(p)
                .and_then(|m| mantissa.checked_mul(m))
                .ok_or(QuantityError::TooLarge)?
        }
    } else if -exp > i64::from(MAX_POW10) {
        // Far below one milli-unit: rounds up to one unless it is zero.
        i128::from(mantissa > 0)
    } else {
        div_ceil(mantissa, 10i128.pow((-exp) as u32))
    };
    Ok(Milli(if negative { -value } else { value }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_exactly() {
        for (q, milli) in [
            ("0", 0),
            ("1", 1000),
            ("1000m", 1000),
            ("100m", 100),
            ("0.5", 500),
            (".5", 500),
            ("1.", 1000),
            ("1.5Gi", 1_610_612_736_000),
            ("64Mi", 64 * (1 << 20) * 1000),
            ("67108864", 67_108_864_000),
            ("1k", 1_000_000),
            ("1G", 1_000_000_000_000),
            ("1e3", 1_000_000),
            ("1E3", 1_000_000),
            ("2e-3", 2),
            ("1.5e+1", 15_000),
            ("100u", 1),
            ("1n", 1),
            ("0.0001", 1),
            ("1Ei", (1i128 << 60) * 1000),
            ("+2", 2000),
            ("-2", -2000),
            ("000012.3000", 12_300),
            (" 250m ", 250),
        ] {
            assert_eq!(Milli::parse(q), Ok(Milli(milli)), "{q:?}");
        }
        assert_eq!(Milli::parse("1000m"), Milli::parse("1"));
        assert_eq!(Milli::parse("64Mi"), Milli::parse("67108864"));
        assert_eq!(Milli::parse("1Gi"), Milli::parse("1024Mi"));
    }

    #[test]
    fn bad_quantities_are_refused_with_apimachinerys_messages() {
        for q in [
            "", ".", "m", "1.2.3", "1Gb", "1e", "1ee3", "1e3.5", "abc", "1 m", "1K",
        ] {
            assert!(Milli::parse(q).is_err(), "{q:?}");
        }
        assert_eq!(Milli::parse("1Gb"), Err(QuantityError::Suffix));
        assert_eq!(Milli::parse("."), Err(QuantityError::Format));
        assert_eq!(Milli::parse("1e400"), Err(QuantityError::TooLarge));
        assert_eq!(Milli::parse("1e-400"), Ok(Milli(1)));
        assert_eq!(Milli::parse("0e-400"), Ok(Milli(0)));
    }

    #[test]
    fn values_round_up_like_apimachinery() {
        assert_eq!(Milli::parse("1.5").unwrap().value(), 2);
        assert_eq!(Milli::parse("1500m").unwrap().value(), 2);
        assert_eq!(Milli::parse("64Mi").unwrap().value(), 64 << 20);
        assert_eq!(Milli::parse("-1.5").unwrap().value(), -1);
        assert_eq!(Milli::from_units(3).milli(), 3000);
    }

    #[test]
    fn amounts_print_as_kubernetes_does() {
        let m = |q: &str| Milli::parse(q).unwrap();
        assert_eq!(m("500m").to_decimal_string(), "500m");
        assert_eq!(m("2000m").to_decimal_string(), "2");
        assert_eq!(m("64Mi").to_binary_string(), "64Mi");
        assert_eq!(m("1073741824").to_binary_string(), "1Gi");
        assert_eq!(m("1500").to_binary_string(), "1500");
        assert_eq!(m("0").to_binary_string(), "0");
        assert_eq!(m("2Ti").to_binary_string(), "2Ti");
        assert_eq!(
            [m("100m"), m("0.9")].into_iter().sum::<Milli>().to_string(),
            "1"
        );
    }
}

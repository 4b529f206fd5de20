//! Exact money: [`Money`] in integer picodollars, and [`Pricing`] per token.

use std::fmt;

use crate::Usage;

/// An amount of US dollars, held as an integer count of picodollars
/// (10^-12 USD) so ledger sums are exact. Arithmetic saturates; the largest
/// amount is about 18 million USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(u64);

/// Picodollars per dollar.
const PICOS_PER_USD: f64 = 1e12;

impl Money {
    /// Nothing.
    pub const ZERO: Money = Money(0);

    /// An amount in picodollars.
    pub const fn from_picos(picos: u64) -> Money {
        Money(picos)
    }

    /// An amount in dollars, rounded to the nearest picodollar.
    ///
    /// # Errors
    /// [`PriceError`] if `usd` is negative, not finite, or too large.
    pub fn from_usd(usd: f64) -> Result<Money, PriceError> {
        let picos = usd * PICOS_PER_USD;
        if !usd.is_finite() || usd < 0.0 || picos >= u64::MAX as f64 {
            return Err(PriceError { value: usd });
        }
        Ok(Money(picos.round() as u64))
    }

    /// The amount in picodollars.
    pub const fn picos(self) -> u64 {
        self.0
    }

    /// The amount in dollars (for display; sums stay in picodollars).
    pub fn usd(self) -> f64 {
        self.0 as f64 / PICOS_PER_USD
    }

    /// `self + other`, saturating.
    #[must_use]
    pub const fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    /// `self - other`, at least zero.
    #[must_use]
    pub const fn saturating_sub(self, other: Money) -> Money {
        Money(self.0.saturating_sub(other.0))
    }

    /// `self * n`, saturating.
    #[must_use]
    pub const fn saturating_mul(self, n: u64) -> Money {
        Money(self.0.saturating_mul(n))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${:.6}", self.usd())
    }
}

/// A price or amount that is negative, not a number, or too large.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("invalid amount of money: {value}")]
pub struct PriceError {
    /// The rejected value.
    pub value: f64,
}

/// What one token of each kind costs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pricing {
    /// Per uncached prompt token.
    pub input: Money,
    /// Per cached prompt token.
    pub cached_input: Money,
    /// Per completion token.
    pub output: Money,
}

impl Pricing {
    /// Prices in USD per million tokens, as price lists give them. The cached
    /// price defaults to the input price.
    ///
    /// # Errors
    /// [`PriceError`] for a negative, non-finite or huge price.
    pub fn per_million(
        input: f64,
        cached_input: Option<f64>,
        output: f64,
    ) -> Result<Pricing, PriceError> {
        let per_token = |usd_per_mtok: f64| Money::from_usd(usd_per_mtok / 1e6);
        Ok(Pricing {
            input: per_token(input)?,
            cached_input: per_token(cached_input.unwrap_or(input))?,
            output: per_token(output)?,
        })
    }

    /// What `usage` costs: uncached prompt, cached prompt and delivered
    /// completion tokens at their prices. Canceled and draft tokens are not
    /// charged (they never reached the client).
    pub const fn cost(&self, usage: &Usage) -> Money {
        self.input
            .saturating_mul(usage.uncached_prompt())
            .saturating_add(self.cached_input.saturating_mul(usage.cached()))
            .saturating_add(self.output.saturating_mul(usage.completion()))
    }

    /// The most a request can cost: every prompt token uncached and every
    /// allowed completion token produced.
    pub const fn worst_case(&self, prompt_tokens: u64, max_completion_tokens: u64) -> Money {
        self.input
            .saturating_mul(prompt_tokens)
            .saturating_add(self.output.saturating_mul(max_completion_tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_per_million_are_exact() {
        let p = Pricing::per_million(0.50, Some(0.05), 1.50).unwrap();
        assert_eq!(p.input.picos(), 500_000);
        assert_eq!(p.cached_input.picos(), 50_000);
        assert_eq!(p.output.picos(), 1_500_000);
        let usage = Usage::new(1000, 200).with_cached(300).unwrap();
        // 700 * 0.5e-6 + 300 * 0.05e-6 + 200 * 1.5e-6 = 0.000665 USD
        assert_eq!(p.cost(&usage), Money::from_picos(665_000_000));
        assert_eq!(p.worst_case(1000, 256), Money::from_picos(884_000_000));
        assert_eq!(
            Pricing::per_million(1.0, None, 2.0)
                .unwrap()
                .cached_input
                .picos(),
            1_000_000
        );
    }

    #[test]
    fn rejects_bad_amounts() {
        for bad in [-1.0, f64::NAN, f64::INFINITY, 1e30] {
            assert!(Money::from_usd(bad).is_err(), "{bad}");
        }
        assert_eq!(Money::from_usd(25.0).unwrap().picos(), 25_000_000_000_000);
        assert_eq!(Money::from_usd(0.0123).unwrap().to_string(), "$0.012300");
    }

    #[test]
    fn arithmetic_saturates() {
        let max = Money::from_picos(u64::MAX);
        assert_eq!(max.saturating_add(Money::from_picos(1)), max);
        assert_eq!(
            Money::ZERO.saturating_sub(Money::from_picos(1)),
            Money::ZERO
        );
        assert_eq!(max.saturating_mul(2), max);
    }
}

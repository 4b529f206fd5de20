//! Token accounting: [`Usage`] counts each kind of token separately and
//! keeps its invariants by construction.

use std::fmt;

/// Token counts of one request (or a sum of requests).
///
/// | count | meaning |
/// |---|---|
/// | `prompt` | prompt tokens the engine processed, cached ones included |
/// | `cached` | prompt tokens served from the engine's prefix cache |
/// | `completion` | completion tokens delivered to the client |
/// | `drafted` | speculative-decoding draft tokens proposed |
/// | `accepted` | draft tokens the target model accepted |
/// | `rejected` | draft tokens the target model rejected |
/// | `canceled` | completion tokens produced (or reserved) but never delivered because the request was canceled |
/// | `reasoning` | completion tokens the engine counted as reasoning (a part of `completion + canceled`, not on top of it) |
///
/// Invariants, checked by every constructor so no `Usage` breaks them:
/// - `cached <= prompt`;
/// - `drafted == accepted + rejected`;
/// - `accepted <= completion + canceled` (an accepted draft token is a
///   completion token, delivered or not);
/// - `reasoning <= completion + canceled`.
///
/// Sums ([`Usage::saturating_add`]) keep the invariants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    prompt: u64,
    cached: u64,
    completion: u64,
    drafted: u64,
    accepted: u64,
    canceled: u64,
    reasoning: u64,
}

/// A count that would break a [`Usage`] invariant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// More cached prompt tokens than prompt tokens.
    #[error("cached tokens ({cached}) exceed prompt tokens ({prompt})")]
    CachedAbovePrompt {
        /// Cached prompt tokens.
        cached: u64,
        /// Prompt tokens.
        prompt: u64,
    },
    /// More accepted draft tokens than drafted.
    #[error("accepted draft tokens ({accepted}) exceed drafted tokens ({drafted})")]
    AcceptedAboveDrafted {
        /// Accepted draft tokens.
        accepted: u64,
        /// Drafted tokens.
        drafted: u64,
    },
    /// More accepted draft tokens than completion tokens produced.
    #[error("accepted draft tokens ({accepted}) exceed produced completion tokens ({produced})")]
    AcceptedAboveProduced {
        /// Accepted draft tokens.
        accepted: u64,
        /// Completion plus canceled tokens.
        produced: u64,
    },
    /// More reasoning tokens than completion tokens produced.
    #[error("reasoning tokens ({reasoning}) exceed produced completion tokens ({produced})")]
    ReasoningAboveProduced {
        /// Reasoning tokens.
        reasoning: u64,
        /// Completion plus canceled tokens.
        produced: u64,
    },
}

impl Usage {
    /// No tokens.
    pub const ZERO: Usage = Usage {
        prompt: 0,
        cached: 0,
        completion: 0,
        drafted: 0,
        accepted: 0,
        canceled: 0,
        reasoning: 0,
    };

    /// Prompt and completion tokens, nothing cached, no speculation.
    pub const fn new(prompt: u64, completion: u64) -> Usage {
        Usage {
            prompt,
            completion,
            ..Usage::ZERO
        }
    }

    /// Sets the cached prompt tokens.
    ///
    /// # Errors
    /// [`UsageError::CachedAbovePrompt`] if `cached > prompt`.
    pub fn with_cached(self, cached: u64) -> Result<Usage, UsageError> {
        Usage { cached, ..self }.checked()
    }

    /// Sets the speculative-decoding counts; rejected is `drafted - accepted`.
    ///
    /// # Errors
    /// [`UsageError::AcceptedAboveDrafted`] or
    /// [`UsageError::AcceptedAboveProduced`].
    pub fn with_speculative(self, drafted: u64, accepted: u64) -> Result<Usage, UsageError> {
        Usage {
            drafted,
            accepted,
            ..self
        }
        .checked()
    }

    /// Sets the canceled tokens.
    ///
    /// # Errors
    /// [`UsageError::AcceptedAboveProduced`] cannot arise from raising
    /// canceled, but lowering it below what accepted needs can.
    pub fn with_canceled(self, canceled: u64) -> Result<Usage, UsageError> {
        Usage { canceled, ..self }.checked()
    }

    /// Sets the delivered completion tokens.
    ///
    /// # Errors
    /// [`UsageError::AcceptedAboveProduced`] if accepted draft tokens no
    /// longer fit.
    pub fn with_completion(self, completion: u64) -> Result<Usage, UsageError> {
        Usage { completion, ..self }.checked()
    }

    /// Sets the completion tokens that were reasoning, capped at the
    /// completion tokens produced (`completion + canceled`): engines report
    /// it, and a report is recorded rather than refused.
    #[must_use]
    pub const fn with_reasoning(self, reasoning: u64) -> Usage {
        let produced = self.completion.saturating_add(self.canceled);
        Usage {
            reasoning: if reasoning < produced {
                reasoning
            } else {
                produced
            },
            ..self
        }
    }

    /// Counts forced into a valid usage: cached is capped at prompt,
    /// accepted at drafted and at completion + canceled. For engine reports
    /// and torn readings that must be recorded rather than refused.
    pub fn clamped(
        prompt: u64,
        cached: u64,
        completion: u64,
        drafted: u64,
        accepted: u64,
        canceled: u64,
    ) -> Usage {
        Usage {
            prompt,
            cached: cached.min(prompt),
            completion,
            drafted,
            accepted: accepted
                .min(drafted)
                .min(completion.saturating_add(canceled)),
            canceled,
            reasoning: 0,
        }
    }

    fn checked(self) -> Result<Usage, UsageError> {
        if self.cached > self.prompt {
            return Err(UsageError::CachedAbovePrompt {
                cached: self.cached,
                prompt: self.prompt,
            });
        }
        if self.accepted > self.drafted {
            return Err(UsageError::AcceptedAboveDrafted {
                accepted: self.accepted,
                drafted: self.drafted,
            });
        }
        let produced = self.completion.saturating_add(self.canceled);
        if self.accepted > produced {
            return Err(UsageError::AcceptedAboveProduced {
                accepted: self.accepted,
                produced,
            });
        }
        if self.reasoning > produced {
            return Err(UsageError::ReasoningAboveProduced {
                reasoning: self.reasoning,
                produced,
            });
        }
        Ok(self)
    }

    /// Prompt tokens, cached ones included.
    pub const fn prompt(&self) -> u64 {
        self.prompt
    }
    /// Prompt tokens served from the prefix cache.
    pub const fn cached(&self) -> u64 {
        self.cached
    }
    /// Prompt tokens that were computed (not cached).
    pub const fn uncached_prompt(&self) -> u64 {
        self.prompt - self.cached
    }
    /// Completion tokens delivered to the client.
    pub const fn completion(&self) -> u64 {
        self.completion
    }
    /// Speculative draft tokens proposed.
    pub const fn drafted(&self) -> u64 {
        self.drafted
    }
    /// Draft tokens accepted.
    pub const fn accepted(&self) -> u64 {
        self.accepted
    }
    /// Draft tokens rejected (`drafted - accepted`).
    pub const fn rejected(&self) -> u64 {
        self.drafted - self.accepted
    }
    /// Tokens produced or reserved but not delivered because of a cancel.
    pub const fn canceled(&self) -> u64 {
        self.canceled
    }
    /// Completion tokens the engine counted as reasoning.
    pub const fn reasoning(&self) -> u64 {
        self.reasoning
    }
    /// `prompt + completion`, as OpenAI's `total_tokens`.
    pub const fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }

    /// The field-wise sum, saturating. Sums of valid usages are valid.
    #[must_use]
    pub const fn saturating_add(self, other: Usage) -> Usage {
        Usage {
            prompt: self.prompt.saturating_add(other.prompt),
            cached: self.cached.saturating_add(other.cached),
            completion: self.completion.saturating_add(other.completion),
            drafted: self.drafted.saturating_add(other.drafted),
            accepted: self.accepted.saturating_add(other.accepted),
            canceled: self.canceled.saturating_add(other.canceled),
            reasoning: self.reasoning.saturating_add(other.reasoning),
        }
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "prompt={} cached={} completion={} drafted={} accepted={} rejected={} canceled={}",
            self.prompt,
            self.cached,
            self.completion,
            self.drafted,
            self.accepted,
            self.rejected(),
            self.canceled
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn builds_and_reads_back() {
        let u = Usage::new(100, 20)
            .with_cached(30)
            .and_then(|u| u.with_speculative(12, 9))
            .and_then(|u| u.with_canceled(4))
            .unwrap();
        assert_eq!(
            (u.prompt(), u.cached(), u.uncached_prompt(), u.completion()),
            (100, 30, 70, 20)
        );
        assert_eq!((u.drafted(), u.accepted(), u.rejected()), (12, 9, 3));
        assert_eq!((u.canceled(), u.total()), (4, 120));
        assert_eq!(
            u.to_string(),
            "prompt=100 cached=30 completion=20 drafted=12 accepted=9 rejected=3 canceled=4"
        );
    }

    #[test]
    fn rejects_each_broken_invariant() {
        assert_eq!(
            Usage::new(5, 0).with_cached(6),
            Err(UsageError::CachedAbovePrompt {
                cached: 6,
                prompt: 5
            })
        );
        assert_eq!(
            Usage::new(5, 10).with_speculative(3, 4),
            Err(UsageError::AcceptedAboveDrafted {
                accepted: 4,
                drafted: 3
            })
        );
        assert_eq!(
            Usage::new(5, 2).with_speculative(8, 3),
            Err(UsageError::AcceptedAboveProduced {
                accepted: 3,
                produced: 2
            })
        );
        // Canceled tokens count as produced.
        assert!(
            Usage::new(5, 2)
                .with_canceled(1)
                .unwrap()
                .with_speculative(8, 3)
                .is_ok()
        );
        // Lowering completion below accepted is refused.
        let u = Usage::new(5, 4).with_speculative(4, 4).unwrap();
        assert!(u.with_completion(3).is_err());
        // Reasoning is capped at what was produced, and stays within it.
        let u = Usage::new(5, 4).with_reasoning(9);
        assert_eq!(u.reasoning(), 4);
        assert_eq!(
            u.with_completion(3),
            Err(UsageError::ReasoningAboveProduced {
                reasoning: 4,
                produced: 3
            })
        );
        assert_eq!(
            u.saturating_add(Usage::new(1, 2).with_reasoning(1))
                .reasoning(),
            5
        );
    }

    fn usage() -> impl Strategy<Value = Usage> {
        (0u64..1 << 40, 0u64..1 << 40, 0u64..1 << 40, 0u64..1 << 40).prop_flat_map(
            |(prompt, completion, drafted, canceled)| {
                let produced = completion + canceled;
                (0..=prompt, 0..=drafted.min(produced)).prop_map(move |(cached, accepted)| {
                    Usage::new(prompt, completion)
                        .with_cached(cached)
                        .and_then(|u| u.with_canceled(canceled))
                        .and_then(|u| u.with_speculative(drafted, accepted))
                        .unwrap()
                })
            },
        )
    }

    #[test]
    fn clamped_is_always_valid() {
        let u = Usage::clamped(5, 9, 2, 3, 7, 0);
        assert_eq!((u.cached(), u.accepted(), u.rejected()), (5, 2, 1));
    }

    proptest! {
        #[test]
        fn sums_keep_the_invariants(a in usage(), b in usage()) {
            let s = a.saturating_add(b);
            prop_assert_eq!(s.drafted(), s.accepted() + s.rejected());
            prop_assert!(s.cached() <= s.prompt());
            prop_assert!(s.accepted() <= s.completion() + s.canceled());
            prop_assert_eq!(s.rejected(), a.rejected() + b.rejected());
            // Re-validating the sum through the constructors succeeds.
            let rebuilt = Usage::new(s.prompt(), s.completion())
                .with_cached(s.cached())
                .and_then(|u| u.with_canceled(s.canceled()))
                .and_then(|u| u.with_speculative(s.drafted(), s.accepted()));
            prop_assert_eq!(rebuilt, Ok(s));
        }
    }
}

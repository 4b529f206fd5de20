//! [`EnginePhase`]: where a request is inside an engine, and
//! [`AbortCounts`] of aborts per phase.

use std::fmt;

/// Where a request is inside an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EnginePhase {
    /// Accepted, waiting for a slot.
    Queued,
    /// Computing the prompt (before the first token).
    Prefill,
    /// Generating tokens.
    Decode,
}

impl EnginePhase {
    /// Every phase, in order.
    pub const ALL: [EnginePhase; 3] = [
        EnginePhase::Queued,
        EnginePhase::Prefill,
        EnginePhase::Decode,
    ];

    /// A stable name for labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            EnginePhase::Queued => "queued",
            EnginePhase::Prefill => "prefill",
            EnginePhase::Decode => "decode",
        }
    }
}

impl fmt::Display for EnginePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many requests were aborted in each phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AbortCounts {
    /// Aborted while queued.
    pub queued: u64,
    /// Aborted during prefill.
    pub prefill: u64,
    /// Aborted during decode.
    pub decode: u64,
}

impl AbortCounts {
    /// The count for `phase`.
    pub const fn get(&self, phase: EnginePhase) -> u64 {
        match phase {
            EnginePhase::Queued => self.queued,
            EnginePhase::Prefill => self.prefill,
            EnginePhase::Decode => self.decode,
        }
    }

    /// Adds one abort in `phase`.
    pub fn add(&mut self, phase: EnginePhase) {
        match phase {
            EnginePhase::Queued => self.queued += 1,
            EnginePhase::Prefill => self.prefill += 1,
            EnginePhase::Decode => self.decode += 1,
        }
    }

    /// All aborts.
    pub const fn total(&self) -> u64 {
        self.queued + self.prefill + self.decode
    }
}

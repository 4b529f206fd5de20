//! What a backend serves and which engines a model prefers: `[[backends]]`
//! `capabilities` and `context_window`, `[[models]]` `prefer`.

use gateway_core::{Capabilities, Capability, EngineKind};

use super::walk::{Check, Problems, Reader, Reported};

/// A backend's `capabilities`: a list of [`Capability`] names, each once;
/// `None` when absent (the engine's
/// [`default_capabilities`](EngineKind::default_capabilities)).
pub(super) fn capabilities(r: &Reader<'_>, p: &mut Problems) -> Check<Option<Capabilities>> {
    let Some(items) = r.strings("capabilities", p)? else {
        return Ok(None);
    };
    let mut set = Capabilities::NONE;
    let mut ok = true;
    for (path, name) in items {
        match Capability::from_name(name) {
            Some(c) if set.contains(c) => {
                p.push(path, format!("duplicate capability {name:?}"));
                ok = false;
            }
            Some(c) => set.insert(c),
            None => {
                let expected: Vec<&str> = Capability::ALL.iter().map(|c| c.as_str()).collect();
                p.push(
                    path,
                    format!(
                        "unknown capability {name:?} (expected one of {})",
                        expected.join(", ")
                    ),
                );
                ok = false;
            }
        }
    }
    if ok { Ok(Some(set)) } else { Err(Reported) }
}

/// A model's `prefer`: engine names of `engines`, each once.
pub(super) fn prefer(
    r: &Reader<'_>,
    engines: &[EngineKind],
    p: &mut Problems,
) -> Check<Vec<EngineKind>> {
    let Some(items) = r.strings("prefer", p)? else {
        return Ok(Vec::new());
    };
    let mut out: Vec<EngineKind> = Vec::with_capacity(items.len());
    let mut ok = true;
    for (path, name) in items {
        match engines.iter().copied().find(|e| e.as_str() == name) {
            Some(e) if out.contains(&e) => {
                p.push(path, format!("duplicate engine {name:?}"));
                ok = false;
            }
            Some(e) => out.push(e),
            None => {
                let expected: Vec<&str> = engines.iter().map(|e| e.as_str()).collect();
                p.push(
                    path,
                    format!(
                        "unknown engine {name:?} (expected one of {})",
                        expected.join(", ")
                    ),
                );
                ok = false;
            }
        }
    }
    if ok { Ok(out) } else { Err(Reported) }
}

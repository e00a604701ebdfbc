//! Session kinds shipped with minos.

pub mod kv;
pub mod minotaur;

use crate::handler::Registry;

impl Registry {
    /// The kinds shipped with minos: `kv` and `minotaur`.
    pub fn with_builtin_kinds() -> Self {
        let mut registry = Self::new();
        registry.register(kv::KIND, kv::Kv);
        registry.register(minotaur::KIND, minotaur::Minotaur::default());
        registry
    }
}

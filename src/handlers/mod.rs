//! Session kinds shipped with minos.

pub mod kv;
pub mod minotaur;

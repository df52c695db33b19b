//! Flotilla's inference engine (work in progress).

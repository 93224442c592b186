//! nf-core (being built).
#![no_std]

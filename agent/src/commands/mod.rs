//! One module a command.

pub mod port_check;

//! What a request asks for, parsed and checked before anything reaches the
//! database: parameters, filters, cursors, bodies, and the queries they make.

pub mod body;
pub mod cursor;
pub mod export;
pub mod filters;
pub mod params;
pub mod scalar;
pub mod search;

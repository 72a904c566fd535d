//! Admin query parsing never panics: search parameters, cursors, export
//! parameters, whatever the query string holds.
#![no_main]

use auditline_admin_api::query::{
    cursor::CursorKey, filters::SEARCH_PARAMS, params::Params, search::Search,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let key = CursorKey::from_bytes(vec![7; 32]);
    if let Ok(params) = Params::parse_from(query, SEARCH_PARAMS) {
        let _ = Search::parse(&params, &key);
    }
    let _ = key.decode(query);
    if let Ok(params) = Params::parse(query, &["format", "compression", "from", "to", "limit"]) {
        let _ = params.time("from");
        let _ = params.integer("limit", 1, 1000);
    }
});

//! Configuration files (`config/*.toml`): TOML on top of the defaults, then the checks serde cannot
//! make. A text either gives a config that passes `validate` or an error — never a panic.
#![no_main]

use commucat::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = Config::parse_toml(text) {
        cfg.validate().expect("a parsed config is valid");
    }
});

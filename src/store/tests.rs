use super::*;

/// A database closed while another open waits for it is opened; one that stays open is
/// refused as locked once [`LOCK_WAIT`] has passed.
#[test]
fn opening_waits_a_moment_for_the_lock_then_says_locked() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path(), Options::cache(8)).unwrap();
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
    });
    let second = Store::open(dir.path(), Options::cache(8)).expect("opened once released");
    closer.join().unwrap();
    match Store::open(dir.path(), Options::cache(8)) {
        Err(Error::Locked(d)) => assert_eq!(d, dir.path()),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened a database that is open"),
    }
    drop(second);
}

//! Read-only work over many certificates, on the machine's cores: a no-op `renew` and `status` with
//! thousands of certificates are mostly reading each one's state file and output directory
//! (syscalls and JSON), which do not depend on each other.

/// Below this many items the threads cost more than they save.
const MIN_ITEMS: usize = 256;
/// At most this many threads: the work is small per item, and the disk is shared.
const MAX_THREADS: usize = 4;

/// `f` applied to every item, results in the items' order; spread over up to [`MAX_THREADS`]
/// threads when there are many items.
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_THREADS);
    if items.len() < MIN_ITEMS || threads < 2 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> = items
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_items_order_small_and_large() {
        for n in [0, 3, MIN_ITEMS - 1, MIN_ITEMS, 10_001] {
            let items: Vec<usize> = (0..n).collect();
            let got = map(&items, |i| i * 2);
            assert_eq!(got, items.iter().map(|i| i * 2).collect::<Vec<_>>(), "{n}");
        }
    }
}

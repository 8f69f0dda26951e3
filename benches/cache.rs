//! The cache on its own: a hit, an insert, and an insert that evicts.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use sidecache::cache::{Cache, Limits};
use std::hint::black_box;
use std::time::{Duration, Instant};

const KEYS: usize = 10_000;
const VALUE: &[u8] = b"$100\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n";

fn keys() -> Vec<Vec<u8>> {
    (0..KEYS)
        .map(|i| format!("key:{i:08}").into_bytes())
        .collect()
}

fn limits(ttl: Option<Duration>) -> Limits {
    Limits {
        capacity: KEYS,
        ttl,
        max_memory: usize::MAX,
        max_value_size: usize::MAX,
    }
}

fn fill(cache: &mut Cache, key: &[u8], now: Instant) -> bool {
    let ticket = cache.fill_ticket(key).expect("the cache is serving");
    cache.complete_fill(key, ticket, Some(VALUE), None, now)
}

fn full_cache(keys: &[Vec<u8>], now: Instant) -> Cache {
    let mut cache = Cache::new(limits(Some(Duration::from_secs(60))));
    cache.set_serving(true);
    for key in keys {
        assert!(fill(&mut cache, key, now));
    }
    cache
}

fn bench_cache(c: &mut Criterion) {
    let keys = keys();
    let now = Instant::now();

    let mut cache = full_cache(&keys, now);
    let mut i = 0;
    c.bench_function("cache hit", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            let hit = cache.get(black_box(&keys[i]), now).is_some();
            assert!(hit);
            hit
        })
    });

    c.bench_function("cache insert (no eviction)", |b| {
        b.iter_batched_ref(
            || {
                let mut cache = Cache::new(limits(None));
                cache.set_serving(true);
                cache
            },
            |cache| {
                for key in &keys[..100] {
                    fill(cache, black_box(key), now);
                }
            },
            BatchSize::SmallInput,
        )
    });

    let mut cache = full_cache(&keys, now);
    let mut n = 0u64;
    c.bench_function("cache insert with eviction", |b| {
        b.iter(|| {
            n += 1;
            let key = format!("new:{n}");
            assert!(fill(&mut cache, key.as_bytes(), now));
        });
        assert_eq!(cache.len(), KEYS);
    });
}

criterion_group!(benches, bench_cache);
criterion_main!(benches);

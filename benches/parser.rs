//! Throughput of the hot protocol paths: parsing client requests and framing
//! Redis's replies.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sidecache::resp::{self, ReplyFramer, RequestParser};

fn requests(c: &mut Criterion) {
    let mut group = c.benchmark_group("request");

    let get = b"*2\r\n$3\r\nGET\r\n$14\r\nuser:1000:name\r\n".to_vec();
    group.throughput(Throughput::Bytes(get.len() as u64));
    group.bench_function("resp_get", |b| {
        let mut parser = RequestParser::default();
        b.iter(|| {
            let req = parser.parse(black_box(&get)).unwrap().unwrap();
            assert_eq!(req.argc(), 2);
            req
        })
    });

    let inline = b"GET user:1000:name\r\n".to_vec();
    group.throughput(Throughput::Bytes(inline.len() as u64));
    group.bench_function("inline_get", |b| {
        let mut parser = RequestParser::default();
        b.iter(|| {
            let req = parser.parse(black_box(&inline)).unwrap().unwrap();
            assert_eq!(req.argc(), 2);
            req
        })
    });

    let value = vec![b'v'; 1024 * 1024];
    let mut set = Vec::new();
    resp::command(&mut set, &[&b"SET"[..], b"big:key", &value]);
    group.throughput(Throughput::Bytes(set.len() as u64));
    group.bench_function("resp_set_1mb", |b| {
        let mut parser = RequestParser::default();
        b.iter(|| {
            let req = parser.parse(black_box(&set)).unwrap().unwrap();
            assert_eq!(req.argc(), 3);
            req
        })
    });

    // The same value as a client's socket delivers it: the parser is asked
    // again after every read and must not rescan what it has seen.
    group.bench_function("resp_set_1mb_in_16kb_reads", |b| {
        let mut parser = RequestParser::default();
        b.iter(|| {
            for end in (16 * 1024..set.len()).step_by(16 * 1024) {
                assert!(parser.parse(black_box(&set[..end])).unwrap().is_none());
            }
            let req = parser.parse(black_box(&set)).unwrap().unwrap();
            assert_eq!(req.argc(), 3);
            req
        })
    });

    group.finish();
}

fn replies(c: &mut Criterion) {
    let mut group = c.benchmark_group("reply");

    let mut bulk = Vec::new();
    resp::bulk(&mut bulk, &[b'x'; 4096]);
    group.throughput(Throughput::Bytes(bulk.len() as u64));
    group.bench_function("bulk_4kb", |b| {
        let mut framer = ReplyFramer::default();
        b.iter(|| {
            let len = framer.frame(black_box(&bulk)).unwrap().unwrap();
            assert_eq!(len, bulk.len());
            len
        })
    });

    // Shaped like an XRANGE reply: entries of [id, [field, value, ...]].
    let mut nested = Vec::new();
    resp::array_header(&mut nested, 100);
    for i in 0..100 {
        resp::array_header(&mut nested, 2);
        resp::bulk(&mut nested, format!("1700000000000-{i}").as_bytes());
        resp::array_header(&mut nested, 4);
        for field in [&b"sensor"[..], b"temp", b"reading", b"21.5"] {
            resp::bulk(&mut nested, field);
        }
    }
    group.throughput(Throughput::Bytes(nested.len() as u64));
    group.bench_function("nested_array_100", |b| {
        let mut framer = ReplyFramer::default();
        b.iter(|| {
            let len = framer.frame(black_box(&nested)).unwrap().unwrap();
            assert_eq!(len, nested.len());
            len
        })
    });

    group.finish();
}

criterion_group!(benches, requests, replies);
criterion_main!(benches);

//! Fuzzing of every decoder a peer's or a client's bytes reach, on stable
//! Rust with proptest: random bytes and mutated valid encodings must
//! decode or fail, never panic or allocate without bound.

use openraft::raft::{AppendEntriesResponse, InstallSnapshotResponse, VoteResponse};
use openraft::{CommittedLeaderId, LogId, Vote};
use proptest::prelude::*;

use axum::http::Method;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

use super::needed_role;
use super::sessions::CreateRequest;
use crate::auth::Role;
use crate::model::CommandResult;
use crate::model::{Command, NodeId};
use crate::peer::{CallError, DrainRequest, HandoffReport, JoinRequest, ReleaseRequest};
use crate::peer::{CallReply, ForwardedCall};
use crate::peer::{LeaseAnswer, LeaseRequest};
use crate::wire::{decode_bin, TypeConfig};

fn sample_append() -> Vec<u8> {
    let request = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), 7)),
        entries: Vec::new(),
        leader_commit: Some(LogId::new(CommittedLeaderId::new(3, 1), 9)),
    };
    bincode::serialize(&request).expect("encode")
}

fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len().max(1);
    prop::collection::vec((0..len, any::<u8>()), 1..8).prop_map(move |flips| {
        let mut bytes = base.clone();
        for (at, value) in flips {
            if at < bytes.len() {
                bytes[at] = value;
            }
        }
        bytes
    })
}

/// Every bincode decoder of the peer routes and of their answers.
fn decode_all_bin(bytes: &[u8]) {
    let _ = decode_bin::<AppendEntriesRequest<TypeConfig>>(bytes);
    let _ = decode_bin::<VoteRequest<NodeId>>(bytes);
    let _ = decode_bin::<InstallSnapshotRequest<TypeConfig>>(bytes);
    let _ = decode_bin::<Vec<Command>>(bytes);
    let _ = decode_bin::<AppendEntriesResponse<NodeId>>(bytes);
    let _ = decode_bin::<VoteResponse<NodeId>>(bytes);
    let _ = decode_bin::<InstallSnapshotResponse<NodeId>>(bytes);
    let _ = decode_bin::<Result<Vec<CommandResult>, String>>(bytes);
}

/// Every JSON decoder of the public and internal routes and answers.
fn decode_all_json(bytes: &[u8]) {
    let _ = serde_json::from_slice::<CreateRequest>(bytes);
    let _ = serde_json::from_slice::<serde_json::Value>(bytes);
    let _ = serde_json::from_slice::<LeaseRequest>(bytes);
    let _ = serde_json::from_slice::<LeaseAnswer>(bytes);
    let _ = serde_json::from_slice::<ReleaseRequest>(bytes);
    let _ = serde_json::from_slice::<JoinRequest>(bytes);
    let _ = serde_json::from_slice::<DrainRequest>(bytes);
    let _ = serde_json::from_slice::<ForwardedCall>(bytes);
    let _ = serde_json::from_slice::<NodeId>(bytes);
    let _ = serde_json::from_slice::<Result<CallReply, CallError>>(bytes);
    let _ = serde_json::from_slice::<Result<HandoffReport, String>>(bytes);
    let _ =
        serde_json::from_slice::<Result<crate::peer::JoinAnswer, crate::peer::JoinRefusal>>(bytes);
    let _ = serde_json::from_slice::<Result<u64, String>>(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all_bin(&bytes);
        decode_all_json(&bytes);
    }

    #[test]
    fn mutated_raft_messages_never_panic_a_decoder(bytes in mutated(sample_append())) {
        decode_all_bin(&bytes);
    }

    #[test]
    fn mutated_json_never_panics_a_decoder(bytes in mutated(
        br#"{"id":"a","kind":"kv","state":{"x":[1,2,{"y":null}]},"node":2,"fresh":true,"sessions":["a"],"from":1,"term":3,"msg":{},"key":"k"}"#.to_vec()
    )) {
        decode_all_json(&bytes);
    }
}

#[test]
fn a_length_prefix_beyond_the_body_is_an_error_not_an_allocation() {
    // A Vec<Command> claiming 2^60 elements in 8 bytes.
    let bytes = (1u64 << 60).to_le_bytes();
    assert!(decode_bin::<Vec<Command>>(&bytes).is_err());
    let bytes = [0xff; 8];
    assert!(decode_bin::<Vec<u8>>(&bytes).is_err());
}

#[test]
fn public_routes_need_a_role_and_unknown_ones_need_admin() {
    assert_eq!(needed_role(&Method::GET, "/v1/health"), None);
    assert_eq!(needed_role(&Method::GET, "/v1/health/live"), None);
    assert_eq!(
        needed_role(&Method::POST, "/v1/sessions"),
        Some(Role::Client)
    );
    assert_eq!(
        needed_role(&Method::GET, "/v1/sessions/:id"),
        Some(Role::Client)
    );
    assert_eq!(
        needed_role(&Method::DELETE, "/v1/sessions/:id"),
        Some(Role::Admin)
    );
    assert_eq!(
        needed_role(&Method::POST, "/v1/nodes/:id/drain"),
        Some(Role::Admin)
    );
    assert_eq!(
        needed_role(&Method::POST, "/v1/nodes/:id/undrain"),
        Some(Role::Admin)
    );
    assert_eq!(needed_role(&Method::GET, "/metrics"), Some(Role::Admin));
    assert_eq!(
        needed_role(&Method::GET, "/v1/some/new/route"),
        Some(Role::Admin)
    );
}

#[test]
fn the_status_page_and_the_openapi_document_are_open_and_listed_deliberately() {
    assert_eq!(needed_role(&Method::GET, "/"), None);
    assert_eq!(needed_role(&Method::GET, "/v1/openapi.json"), None);
    assert_eq!(needed_role(&Method::POST, "/"), Some(Role::Admin));
    assert_eq!(needed_role(&Method::GET, "/v1/cluster"), Some(Role::Client));
}

/// `docs/openapi.json` is what the code generates. To write it again:
/// `cargo run -- openapi > docs/openapi.json`, or run this test with
/// `MINOS_WRITE_OPENAPI=1`.
#[test]
fn the_committed_openapi_document_is_the_generated_one() {
    let generated = super::openapi_document();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    if std::env::var_os("MINOS_WRITE_OPENAPI").is_some() {
        std::fs::write(path, &generated).expect("write docs/openapi.json");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json differs from the generated document; \
         run `cargo run -- openapi > docs/openapi.json` (or this test with MINOS_WRITE_OPENAPI=1)"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
}

#[test]
fn every_route_of_the_router_is_documented_and_nothing_else() {
    let mut routed: Vec<(String, String)> = super::route_table()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let mut documented: Vec<(String, String)> = super::openapi::documented_routes()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p))
        .collect();
    routed.sort();
    documented.sort();
    assert_eq!(routed, documented);
}

#[test]
fn every_documented_operation_says_its_role_and_protected_ones_answer_401_and_403() {
    let doc: serde_json::Value = serde_json::from_str(&super::openapi_document()).expect("JSON");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            let route = super::openapi::axum_route(path);
            let method: Method = method.to_uppercase().parse().expect("method");
            let role = needed_role(&method, &route);
            let expected = match role {
                None => "none",
                Some(Role::Client) => "client",
                Some(Role::Admin) => "admin",
            };
            assert_eq!(op["x-minos-role"], expected, "{method} {path}");
            let responses = op["responses"].as_object().expect("responses");
            assert_eq!(
                responses.contains_key("401") && responses.contains_key("403"),
                role.is_some(),
                "{method} {path}"
            );
        }
    }
}

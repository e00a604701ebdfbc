//! The smallest complete embedding of minos: a session kind of your own (a chat
//! room), a three-node cluster in this process, and a room that moves to another
//! node with its messages when its node crashes. Run: `cargo run --example embedding`.

use std::collections::BTreeMap;
use std::time::Instant;

use minos::auth::{ClusterSecret, Security, Tokens};
use minos::{HandlerError, NodeBuilder, SessionContext, SessionHandler};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A chat room. Its state, the lines said in it, is what minos commits and moves.
struct Room;

#[derive(Serialize, Deserialize)]
enum RoomMsg {
    Say(String),
    History,
}

#[derive(Debug, Serialize, Deserialize)]
enum RoomReply {
    Posted(usize),
    History(Vec<String>),
}

impl SessionHandler for Room {
    type State = Vec<String>;
    type Msg = RoomMsg;
    type Reply = RoomReply;

    fn create(&self, _: &SessionContext, _: Option<Value>) -> Result<Vec<String>, HandlerError> {
        Ok(Vec::new())
    }

    fn handle(
        &self,
        _: &SessionContext,
        lines: &mut Vec<String>,
        msg: RoomMsg,
    ) -> Result<RoomReply, HandlerError> {
        match msg {
            RoomMsg::Say(line) if line.is_empty() => Err(HandlerError::new("say something")),
            RoomMsg::Say(line) => {
                lines.push(line);
                Ok(RoomReply::Posted(lines.len()))
            }
            RoomMsg::History => Ok(RoomReply::History(lines.clone())),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Three nodes on loopback ports chosen by the OS, each with its own data.
    let dir = tempfile::tempdir()?;
    let (mut listeners, mut peers) = (BTreeMap::new(), BTreeMap::new());
    for id in 1..=3 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        peers.insert(id, listener.local_addr()?.to_string());
        listeners.insert(id, listener);
    }
    // Peers prove membership with a cluster secret; clients and operators
    // with tokens. A real deployment reads both from files.
    let security = Security::Enforced {
        secret: ClusterSecret::parse(&minos::auth::generate_secret()?)?,
        tokens: Tokens::parse(&format!("admin {}", minos::auth::generate_secret()?))?,
    };
    let mut nodes = BTreeMap::new();
    for (id, listener) in listeners {
        let node = NodeBuilder::new(id, dir.path().join(format!("node{id}")))
            .listener(listener)
            .peers(peers.clone())
            .security(security.clone())
            .handler("room", Room)
            .start()
            .await?;
        nodes.insert(id, node);
    }

    // Open a room through node 1 and talk in it; minos picks the room's owner.
    let rooms = nodes[&1].sessions::<Room>("room")?;
    rooms.start("lobby").await?;
    let hi = RoomMsg::Say("ariadne: hi".into());
    let said = rooms.call("lobby", &hi).await?;
    let owner = said.owner;
    println!("lobby runs on node {owner}: {:?}", said.reply);

    // Crash the owner (no handoff, like kill -9), then ask another node.
    let crashed = Instant::now();
    let victim = nodes.remove(&owner).ok_or("the owner is ours")?;
    victim.kill().await;
    let (via, node) = nodes.iter().next().ok_or("a survivor")?;
    let rooms = node.sessions::<Room>("room")?;
    // The call waits while the room moves, then runs on the new owner.
    let heard = rooms.call("lobby", &RoomMsg::History).await?;
    let (new_owner, took) = (heard.owner, crashed.elapsed());
    println!("killed node {owner}; via node {via}, lobby answers from node {new_owner}");
    println!("after {took:?}, with its state: {:?}", heard.reply);
    assert_ne!(new_owner, owner, "the room moved to a survivor");

    for node in nodes.into_values() {
        node.shutdown().await;
    }
    Ok(())
}

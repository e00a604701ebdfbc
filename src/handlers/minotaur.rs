//! The `minotaur` kind: the round-based game from the seed, where players
//! join, register one action per round, and the round ends at
//! `round_end_time`.
//!
//! The round timer is an absolute time in the state, so it survives failover:
//! the new owner sees the same `round_end_time` and, if it has already passed,
//! the runtime resolves the round at once. Resolving sets the next end from
//! the current time, so a deadline missed by many periods resolves one round,
//! not one per missed period.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::handler::{HandlerError, SessionContext, SessionHandler};

/// Kind name under which [`Minotaur`] is registered.
pub const KIND: &str = "minotaur";

/// Longest accepted player name, in bytes.
pub const PLAYER_NAME_MAX_LEN: usize = 128;

/// The game handler; `round_duration` is the length of every round.
#[derive(Clone, Debug)]
pub struct Minotaur {
    /// Time from the start of a round to its end (the seed uses one day).
    pub round_duration: Duration,
}

impl Default for Minotaur {
    fn default() -> Self {
        Self::with_round_duration(Duration::hours(24))
    }
}

impl Minotaur {
    /// A game whose rounds last `round_duration`.
    ///
    /// # Panics
    /// If `round_duration` is not positive: rounds would end as they start
    /// and the runtime would resolve them in a loop (a programming error).
    pub fn with_round_duration(round_duration: Duration) -> Self {
        assert!(
            round_duration > Duration::zero(),
            "round_duration must be positive, got {round_duration}"
        );
        Self { round_duration }
    }

    fn round_end_after(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now.checked_add_signed(self.round_duration)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// A player's record in a game.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Player {
    /// Round in which the player joined.
    pub joined_round: u64,
}

/// The game state, as in the seed's `%Minotaur.GameEngine.Game{}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Game {
    /// The session id.
    pub id: String,
    /// When the current round ends.
    pub round_end_time: DateTime<Utc>,
    /// The game world, opaque to the engine.
    pub world: Option<Value>,
    /// Players by name.
    pub players: BTreeMap<String, Player>,
    /// This round's action of each player who registered one.
    pub registered_actions: BTreeMap<String, Value>,
    /// Current round, from 1.
    pub round: u64,
}

/// What a creator may send as the first state; everything is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GameSetup {
    round_end_time: Option<DateTime<Utc>>,
    world: Option<Value>,
    round: Option<u64>,
}

/// A message to a game, tagged by `op`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum MinotaurMessage {
    /// `{"op":"get_game"}`: answers the whole game. (A struct variant, so
    /// that `deny_unknown_fields` applies to it too.)
    GetGame {},
    /// `{"op":"join","player":P}`: adds a player (idempotent); answers the game.
    Join {
        /// Player name.
        player: String,
    },
    /// `{"op":"register_action","player":P,"action":A}`: records (or
    /// replaces) the player's action for this round; answers
    /// `{"registered": N}`.
    RegisterAction {
        /// Player name; must have joined.
        player: String,
        /// The action, opaque to the engine.
        action: Value,
    },
}

/// The answer to a [`MinotaurMessage`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MinotaurReply {
    /// The whole game (`get_game`, `join`).
    Game(Box<Game>),
    /// Number of actions registered this round (`register_action`).
    Registered {
        /// Count of players with an action this round.
        registered: usize,
    },
}

fn check_player_name(player: &str) -> Result<(), HandlerError> {
    if player.is_empty() {
        return Err(HandlerError::new("player name is empty"));
    }
    if player.len() > PLAYER_NAME_MAX_LEN {
        return Err(HandlerError::new(format!(
            "player name is {} bytes long; at most {PLAYER_NAME_MAX_LEN} are allowed",
            player.len()
        )));
    }
    Ok(())
}

impl SessionHandler for Minotaur {
    type State = Game;
    type Msg = MinotaurMessage;
    type Reply = MinotaurReply;

    fn create(&self, ctx: &SessionContext, initial: Option<Value>) -> Result<Game, HandlerError> {
        let setup = match initial {
            None => GameSetup::default(),
            Some(value) => serde_json::from_value(value)
                .map_err(|e| HandlerError::new(format!("not a minotaur game setup: {e}")))?,
        };
        let round = setup.round.unwrap_or(1);
        if round == 0 {
            return Err(HandlerError::new("round starts at 1"));
        }
        Ok(Game {
            id: ctx.id.as_str().to_owned(),
            round_end_time: setup
                .round_end_time
                .unwrap_or_else(|| self.round_end_after(ctx.now)),
            world: setup.world,
            players: BTreeMap::new(),
            registered_actions: BTreeMap::new(),
            round,
        })
    }

    fn is_query(&self, msg: &MinotaurMessage) -> bool {
        matches!(msg, MinotaurMessage::GetGame {})
    }

    fn handle(
        &self,
        _ctx: &SessionContext,
        game: &mut Game,
        msg: MinotaurMessage,
    ) -> Result<MinotaurReply, HandlerError> {
        match msg {
            MinotaurMessage::GetGame {} => Ok(MinotaurReply::Game(Box::new(game.clone()))),
            MinotaurMessage::Join { player } => {
                check_player_name(&player)?;
                let round = game.round;
                game.players.entry(player).or_insert(Player {
                    joined_round: round,
                });
                Ok(MinotaurReply::Game(Box::new(game.clone())))
            }
            MinotaurMessage::RegisterAction { player, action } => {
                if !game.players.contains_key(&player) {
                    return Err(HandlerError::new(format!(
                        "player {player:?} has not joined game {}",
                        game.id
                    )));
                }
                game.registered_actions.insert(player, action);
                Ok(MinotaurReply::Registered {
                    registered: game.registered_actions.len(),
                })
            }
        }
    }

    fn next_deadline(&self, game: &Game) -> Option<DateTime<Utc>> {
        Some(game.round_end_time)
    }

    fn on_deadline(&self, ctx: &SessionContext, game: &mut Game) {
        // A call before the end (a clock behind the one that scheduled it)
        // resolves nothing, so the round ends exactly once.
        if ctx.now < game.round_end_time {
            return;
        }
        game.round += 1;
        game.registered_actions.clear();
        game.round_end_time = self.round_end_after(ctx.now);
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::model::{Epoch, SessionId};

    fn ctx_at(now: DateTime<Utc>) -> SessionContext {
        SessionContext {
            id: SessionId::new("ABC").unwrap(),
            now,
            owner: 1,
            epoch: Epoch(1),
            version: 0,
        }
    }

    fn start() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 6, 12, 23, 18, 19).unwrap()
    }

    fn new_game() -> Game {
        Minotaur::default().create(&ctx_at(start()), None).unwrap()
    }

    fn call(game: &mut Game, msg: Value) -> Result<MinotaurReply, HandlerError> {
        let msg: MinotaurMessage = serde_json::from_value(msg).expect("a valid message");
        Minotaur::default().handle(&ctx_at(start()), game, msg)
    }

    #[test]
    fn create_without_state_starts_round_one_ending_a_day_later() {
        // As in the seed: id from the session, round 1, no world, end = now + 1 day.
        let game = new_game();
        assert_eq!(game.id, "ABC");
        assert_eq!(game.round, 1);
        assert_eq!(game.world, None);
        assert!(game.players.is_empty() && game.registered_actions.is_empty());
        assert_eq!(game.round_end_time, start() + Duration::days(1));
        assert_eq!(
            Minotaur::default().next_deadline(&game),
            Some(game.round_end_time)
        );
    }

    #[test]
    fn create_takes_end_world_and_round_from_the_setup() {
        // Optional setup fields are used; the id always comes from the session.
        let game = Minotaur::default()
            .create(
                &ctx_at(start()),
                Some(json!({
                    "round_end_time": "2024-06-13T23:18:19.518430Z",
                    "world": {"size": 7},
                    "round": 4
                })),
            )
            .unwrap();
        assert_eq!(game.id, "ABC");
        assert_eq!(game.round, 4);
        assert_eq!(game.world, Some(json!({"size": 7})));
        assert_eq!(
            game.round_end_time,
            DateTime::parse_from_rfc3339("2024-06-13T23:18:19.518430Z").unwrap()
        );
    }

    #[test]
    fn create_rejects_bad_setups() {
        // Unknown fields, a bad time, round 0 and non-objects are refused.
        for bad in [
            json!({"id": "other"}),
            json!({"round_end_time": "tomorrow"}),
            json!({"round": 0}),
            json!([1]),
        ] {
            assert!(
                Minotaur::default()
                    .create(&ctx_at(start()), Some(bad.clone()))
                    .is_err(),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn join_adds_a_player_once_and_answers_the_game() {
        // Joining twice keeps the first record; both calls answer the game.
        let mut game = new_game();
        let reply = call(&mut game, json!({"op": "join", "player": "alice"})).unwrap();
        assert_eq!(reply, MinotaurReply::Game(Box::new(game.clone())));
        assert_eq!(game.players["alice"], Player { joined_round: 1 });
        game.round = 2;
        call(&mut game, json!({"op": "join", "player": "alice"})).unwrap();
        assert_eq!(game.players.len(), 1);
        assert_eq!(game.players["alice"], Player { joined_round: 1 });
    }

    #[test]
    fn get_game_answers_the_whole_game() {
        // `get_game` returns the state unchanged, serialized like the seed's struct.
        let mut game = new_game();
        let reply = call(&mut game, json!({"op": "get_game"})).unwrap();
        assert_eq!(reply, MinotaurReply::Game(Box::new(new_game())));
        let reply = serde_json::to_value(reply).unwrap();
        assert_eq!(reply["id"], json!("ABC"));
        assert_eq!(reply["round"], json!(1));
        assert_eq!(reply["world"], json!(null));
        assert_eq!(reply["players"], json!({}));
        assert_eq!(reply["registered_actions"], json!({}));
        assert_eq!(reply["round_end_time"], json!("2024-06-13T23:18:19Z"));
    }

    #[test]
    fn join_rejects_bad_names() {
        // Empty and over-long names are refused.
        let mut game = new_game();
        assert!(call(&mut game, json!({"op": "join", "player": ""})).is_err());
        let long = "x".repeat(PLAYER_NAME_MAX_LEN + 1);
        assert!(call(&mut game, json!({"op": "join", "player": long})).is_err());
        assert!(game.players.is_empty());
    }

    #[test]
    fn register_action_counts_one_action_per_player() {
        // Actions are kept per player; a second one replaces the first.
        let mut game = new_game();
        call(&mut game, json!({"op": "join", "player": "alice"})).unwrap();
        call(&mut game, json!({"op": "join", "player": "bob"})).unwrap();
        let register = |game: &mut Game, player: &str, action: Value| {
            call(
                game,
                json!({"op": "register_action", "player": player, "action": action}),
            )
            .unwrap()
        };
        assert_eq!(
            register(&mut game, "alice", json!({"move": "north"})),
            MinotaurReply::Registered { registered: 1 }
        );
        assert_eq!(
            register(&mut game, "alice", json!({"move": "south"})),
            MinotaurReply::Registered { registered: 1 }
        );
        assert_eq!(
            register(&mut game, "bob", json!("wait")),
            MinotaurReply::Registered { registered: 2 }
        );
        assert_eq!(game.registered_actions["alice"], json!({"move": "south"}));
        // The reply's JSON is small: just the count.
        assert_eq!(
            serde_json::to_value(MinotaurReply::Registered { registered: 2 }).unwrap(),
            json!({"registered": 2})
        );
    }

    #[test]
    fn action_from_a_non_player_is_rejected() {
        // Only joined players may act; the game is unchanged.
        let mut game = new_game();
        let before = game.clone();
        let error = call(
            &mut game,
            json!({"op": "register_action", "player": "mallory", "action": 1}),
        )
        .unwrap_err();
        assert!(error.0.contains("has not joined"), "{error}");
        assert_eq!(game, before);
    }

    #[test]
    fn malformed_messages_do_not_deserialize() {
        // `end_round` is not a message; missing and unknown fields are refused.
        for bad in [
            json!({"op": "end_round"}),
            json!({"op": "join"}),
            json!({"op": "register_action", "player": "a"}),
            json!({"op": "join", "player": "a", "extra": 1}),
            json!({"op": "get_game", "extra": 1}),
        ] {
            assert!(
                serde_json::from_value::<MinotaurMessage>(bad.clone()).is_err(),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn a_long_missed_deadline_resolves_exactly_once() {
        // Ten days late, the round still advances by one and the next end is
        // one round after the resolution time; an early call does nothing.
        let minotaur = Minotaur::default();
        let mut game = new_game();
        call(&mut game, json!({"op": "join", "player": "alice"})).unwrap();
        call(
            &mut game,
            json!({"op": "register_action", "player": "alice", "action": "dig"}),
        )
        .unwrap();
        let late = start() + Duration::days(10);
        minotaur.on_deadline(&ctx_at(late), &mut game);
        assert_eq!(game.round, 2);
        assert!(game.registered_actions.is_empty());
        assert_eq!(game.players.len(), 1, "players stay across rounds");
        assert_eq!(game.round_end_time, late + Duration::days(1));
        assert_eq!(
            minotaur.next_deadline(&game),
            Some(late + Duration::days(1))
        );

        let resolved = game.clone();
        minotaur.on_deadline(&ctx_at(late + Duration::hours(1)), &mut game);
        assert_eq!(game, resolved, "a call before the new end resolves nothing");
    }

    #[test]
    fn round_duration_is_configurable() {
        // A short round ends `round_duration` after creation and after resolution.
        let minotaur = Minotaur::with_round_duration(Duration::seconds(5));
        let mut game = minotaur.create(&ctx_at(start()), None).unwrap();
        assert_eq!(game.round_end_time, start() + Duration::seconds(5));
        let now = start() + Duration::seconds(6);
        minotaur.on_deadline(&ctx_at(now), &mut game);
        assert_eq!(game.round_end_time, now + Duration::seconds(5));
    }

    #[test]
    #[should_panic(expected = "round_duration must be positive")]
    fn zero_round_duration_is_a_programming_error() {
        // A zero-length round would resolve in a loop, so it is refused.
        Minotaur::with_round_duration(Duration::zero());
    }

    #[test]
    fn game_survives_a_json_round_trip() {
        // The state is committed as JSON and must come back identical.
        let mut game = new_game();
        call(&mut game, json!({"op": "join", "player": "alice"})).unwrap();
        let text = serde_json::to_string(&game).unwrap();
        assert_eq!(serde_json::from_str::<Game>(&text).unwrap(), game);
    }
}

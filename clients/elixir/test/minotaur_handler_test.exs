defmodule Minotaur.GameEngine.HandlerTest do
  @moduledoc """
  The game as an external handler (examples/minotaur_external.ex), through
  the protocol without a node: each request is JSON text given to
  Minos.ExternalHandler.Server.answer/2, each state the JSON it answered,
  as minos would commit and send it back.
  """
  use ExUnit.Case, async: true

  alias Minos.ExternalHandler.Server

  @handlers {:any, Minotaur.GameEngine.Handler}
  @now "2026-12-01T17:00:00.000Z"

  # One protocol round trip: the request as JSON text, the answer as the
  # JSON a node reads.
  defp post(request) do
    {:ok, body} = Minos.JSON.encode(request)
    {status, answer} = Server.answer(body, @handlers)
    {:ok, text} = Minos.JSON.encode(answer)
    {:ok, json} = Minos.JSON.decode(text)
    {status, json}
  end

  defp base(op, fields) do
    Map.merge(
      %{"op" => op, "kind" => "minotaur_ex", "session" => "ABC", "owner" => 1, "now" => @now},
      fields
    )
  end

  defp create(initial \\ nil),
    do: post(base("create", %{"epoch" => 0, "version" => 0, "initial" => initial}))

  defp call(state, msg, now \\ @now) do
    post(
      base("call", %{
        "epoch" => 3,
        "version" => 5,
        "state" => state,
        "msg" => msg,
        "now" => now,
        "deadline" => state["round_end_time"]
      })
    )
  end

  defp fire(state, now) do
    post(
      base("deadline", %{
        "epoch" => 3,
        "version" => 5,
        "state" => state,
        "now" => now,
        "deadline" => state["round_end_time"]
      })
    )
  end

  defp new_game(initial \\ nil) do
    {200, %{"state" => game}} = create(initial)
    game
  end

  test "create: the seed's game, round 1 ending a day later, the timer at its end" do
    assert {200, %{"state" => game, "deadline" => deadline}} = create()

    assert game == %{
             "id" => "ABC",
             "round" => 1,
             "round_end_time" => "2026-12-02T17:00:00.000Z",
             "world" => nil,
             "players" => %{},
             "registered_actions" => %{}
           }

    assert deadline == game["round_end_time"]

    assert {200, %{"state" => %{"round" => 4, "world" => %{"map" => "labyrinth"}}} = answer} =
             create(%{
               "round" => 4,
               "world" => %{"map" => "labyrinth"},
               "round_end_time" => "2027-01-01T00:00:00Z"
             })

    assert answer["deadline"] == "2027-01-01T00:00:00Z"
  end

  test "create refuses a setup that is not the game's" do
    for {initial, why} <- [
          {%{"rounds" => 2}, "unknown rounds"},
          {%{"round" => 0}, "round starts at 1"},
          {%{"round_end_time" => "tomorrow"}, "round_end_time"},
          {[1, 2], "not a minotaur game setup"}
        ] do
      assert {422, %{"error" => error}} = create(initial)
      assert error =~ why
    end
  end

  test "join, register_action and get_game, with the epoch and version echoed" do
    game = new_game()

    assert {200, %{"epoch" => 3, "version" => 5, "reply" => reply, "state" => game} = answer} =
             call(game, %{"op" => "join", "player" => "ariadne"})

    assert reply == game
    assert game["players"] == %{"ariadne" => %{"joined_round" => 1}}
    assert answer["deadline"] == game["round_end_time"]

    assert {200, %{"reply" => %{"registered" => 1}, "state" => game}} =
             call(game, %{
               "op" => "register_action",
               "player" => "ariadne",
               "action" => %{"move" => "north"}
             })

    assert game["registered_actions"] == %{"ariadne" => %{"move" => "north"}}

    # A read: no state in the answer, so nothing is committed.
    assert {200, answer} = call(game, %{"op" => "get_game"})
    assert answer == %{"epoch" => 3, "version" => 5, "reply" => game}

    # Joining again changes nothing (a read too).
    assert {200, answer} = call(game, %{"op" => "join", "player" => "ariadne"})
    refute Map.has_key?(answer, "state")
  end

  test "refusals: a player who has not joined, bad names, messages that are not the game's" do
    game = new_game()

    for {msg, why} <- [
          {%{"op" => "register_action", "player" => "minos", "action" => 1}, "has not joined"},
          {%{"op" => "join", "player" => ""}, "non-empty name"},
          {%{"op" => "join", "player" => 7}, "non-empty name"},
          {%{"op" => "join", "player" => String.duplicate("a", 129)}, "at most 128"},
          {%{"op" => "get_game", "extra" => 1}, "not a minotaur message"},
          {%{"op" => "fly"}, "not a minotaur message"},
          {"get_game", "not a minotaur message"}
        ] do
      assert {422, %{"error" => error}} = call(game, msg)
      assert error =~ why, "#{inspect(msg)}: #{error}"
    end
  end

  test "the round timer: before the end nothing changes; after it the next round starts" do
    game = new_game(%{"round_end_time" => "2026-12-01T17:00:10.000Z"})

    {200, %{"state" => game}} = call(game, %{"op" => "join", "player" => "theseus"})

    {200, %{"state" => game}} =
      call(game, %{"op" => "register_action", "player" => "theseus", "action" => "wait"})

    # A timer that fires early (another node's clock) ends nothing.
    assert {200, %{"state" => ^game, "deadline" => "2026-12-01T17:00:10.000Z"}} =
             fire(game, "2026-12-01T17:00:09.000Z")

    assert {200, %{"epoch" => 3, "version" => 5, "state" => next, "deadline" => deadline}} =
             fire(game, "2026-12-01T17:00:10.500Z")

    assert next["round"] == 2
    assert next["registered_actions"] == %{}
    assert next["players"] == game["players"]
    # The next round ends a round's length (a day) after the timer fired.
    assert next["round_end_time"] == "2026-12-02T17:00:10.500Z"
    assert deadline == next["round_end_time"]
  end
end

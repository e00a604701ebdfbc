defmodule Minos.GameSessionExternalTest do
  @moduledoc """
  The seed's cluster test ("game session is restarted on another node")
  with the game's logic in Elixir: kind minotaur_ex, served by
  Minotaur.GameEngine.Handler in the app beside each of the three nodes
  (Minos.TestApps, in this VM, ports 17801-17803). A game owned by node 1,
  players joined and actions registered, node 1 stopped (SIGTERM; or
  SIGKILL and its app stopped too), then ONE call through node 2 must
  answer the game with its actions, run by another node's app: no sleep,
  no retry, no wait_until. Each scenario runs 20 times; setup restarts
  what the previous iteration stopped and waits for it by condition.

  Also: the round timer fires (the session's deadline advances the round,
  seen by polling with a deadline), refusals come back as :rejected, an
  app that stops while its node runs has its games moved, and the engine's
  API (Minotaur.GameEngine) on this kind.
  """
  use ExUnit.Case, async: false

  alias Minos.{TestApps, TestCluster, TestPlacement}
  alias Minotaur.GameEngine, as: GE

  @iterations 20
  @kind TestApps.kind()
  @actions %{"ariadne" => %{"move" => "north"}, "theseus" => %{"move" => "west"}}

  setup_all do
    TestCluster.ensure_started!()
  end

  setup do
    # Not part of the scenario: the previous iteration stopped node 1
    # (and maybe its app).
    TestCluster.ensure_all_up!()
    %{client: TestCluster.client([1, 2, 3])}
  end

  defp start_game_on_node1(client, prefix) do
    id = TestPlacement.id_on(1, "EX-#{prefix}-#{System.unique_integer([:positive])}")

    assert {:ok, %Minos.Session{id: ^id, kind: @kind, owner: 1}} =
             Minos.start_session(client, id, kind: @kind)

    for {player, action} <- @actions do
      assert {:ok, %Minos.Reply{owner: 1, reply: %{"players" => %{^player => _}}}} =
               Minos.call(client, id, %{op: "join", player: player})

      assert {:ok, %Minos.Reply{reply: %{"registered" => _}, owner: 1}} =
               Minos.call(client, id, %{op: "register_action", player: player, action: action})
    end

    id
  end

  # The one call through node 2, and what it must answer.
  defp assert_served_elsewhere_with_its_state(id) do
    node2 = TestCluster.client([2])
    result = Minos.call(node2, id, %{op: "get_game"}, timeout: 10_000)

    assert {:ok, %Minos.Reply{reply: %{"id" => game_id} = reply, owner: owner, epoch: epoch}} =
             result

    assert game_id == id
    assert reply["registered_actions"] == @actions
    assert Map.keys(reply["players"]) == Map.keys(@actions)
    assert reply["round"] == 1
    assert owner in [2, 3], "served by node #{owner}, expected another node than 1"
    assert epoch > 1
  end

  for i <- 1..@iterations do
    test "Elixir game session is restarted on another node after SIGTERM of node 1 (#{i}/#{@iterations})",
         %{client: client} do
      id = start_game_on_node1(client, "TERM")
      TestCluster.term!(1)
      assert_served_elsewhere_with_its_state(id)
    end

    test "Elixir game session is restarted on another node after SIGKILL of node 1 and its app (#{i}/#{@iterations})",
         %{client: client} do
      id = start_game_on_node1(client, "KILL")
      TestCluster.kill!(1)
      TestApps.stop!(1)
      assert_served_elsewhere_with_its_state(id)
    end
  end

  test "node 1's app stops while node 1 runs: its game is served by another node's app", %{
    client: client
  } do
    id = start_game_on_node1(client, "APP")
    TestApps.stop!(1)
    assert_served_elsewhere_with_its_state(id)
  end

  test "the round timer: the deadline advances the round on the owner", %{client: client} do
    id = TestPlacement.id_on(2, "EX-TIMER-#{System.unique_integer([:positive])}")

    round_end =
      DateTime.utc_now() |> DateTime.add(1_500, :millisecond) |> DateTime.truncate(:millisecond)

    assert {:ok, %Minos.Session{state: %{"state" => game, "deadline" => deadline}}} =
             Minos.start_session(client, id, kind: @kind, state: %{round_end_time: round_end})

    assert game["round"] == 1
    assert same_time?(deadline, round_end)

    assert {:ok, _} = Minos.call(client, id, %{op: "join", player: "ariadne"})

    assert {:ok, %Minos.Reply{reply: %{"registered" => 1}}} =
             Minos.call(client, id, %{op: "register_action", player: "ariadne", action: "wait"})

    # Not part of the assertion: waiting for the round's end, by condition.
    TestCluster.wait_until(10_000, "round 2 of game #{id}", fn ->
      match?({:ok, %Minos.Session{state: %{"state" => %{"round" => 2}}}}, Minos.get(client, id))
    end)

    assert {:ok, %Minos.Session{state: %{"state" => game, "deadline" => deadline}}} =
             Minos.get(client, id)

    assert game["registered_actions"] == %{}
    assert game["players"] == %{"ariadne" => %{"joined_round" => 1}}
    {:ok, next_end, 0} = DateTime.from_iso8601(game["round_end_time"])
    assert same_time?(deadline, next_end)
    # The next round ends a day after this one ended (the default round).
    assert DateTime.diff(next_end, round_end, :second) in 86_399..86_460

    assert {:ok, %Minos.Reply{reply: %{"round" => 2}}} = Minos.call(client, id, %{op: "get_game"})
  end

  # The same instant, whatever the precision each side wrote it with.
  defp same_time?(text, time) do
    {:ok, parsed, 0} = DateTime.from_iso8601(text)
    DateTime.compare(parsed, time) == :eq
  end

  test "refusals come back as :rejected and change nothing", %{client: client} do
    id = TestPlacement.id_on(3, "EX-REFUSE-#{System.unique_integer([:positive])}")
    assert {:ok, %Minos.Session{}} = Minos.start_session(client, id, kind: @kind)
    assert {:ok, _} = Minos.call(client, id, %{op: "join", player: "ariadne"})

    assert {:error, %Minos.Error{code: :rejected, status: 422, message: message}} =
             Minos.call(client, id, %{op: "register_action", player: "minos", action: "eat"})

    assert message =~ ~s(player "minos" has not joined)

    assert {:error, %Minos.Error{code: :rejected, message: message}} =
             Minos.call(client, id, %{op: "join", player: ""})

    assert message =~ "non-empty name"

    assert {:error, %Minos.Error{code: :rejected}} = Minos.call(client, id, %{op: "fly"})

    assert {:ok, %Minos.Session{version: version, state: %{"state" => game}}} =
             Minos.get(client, id)

    assert game["players"] == %{"ariadne" => %{"joined_round" => 1}}
    assert game["registered_actions"] == %{}
    assert {:ok, %Minos.Session{version: ^version}} = Minos.get(client, id)

    # A refused create creates nothing.
    other = "EX-REFUSE-CREATE-#{System.unique_integer([:positive])}"

    assert {:error, %Minos.Error{code: :rejected, message: message}} =
             Minos.start_session(client, other, kind: @kind, state: %{round: 0})

    assert message =~ "round starts at 1"
    assert {:error, %Minos.Error{code: :not_found}} = Minos.get(client, other)
  end

  test "the engine's API (Minotaur.GameEngine) on the Elixir kind", %{client: client} do
    round_end = DateTime.add(DateTime.utc_now(), 1, :day) |> DateTime.truncate(:second)
    id = TestPlacement.id_on(3, "EX-ENGINE-#{System.unique_integer([:positive])}")
    game = %GE.Game{id: id, round_end_time: round_end}

    assert {:ok, %GE.Game{id: ^id, round: 1, round_end_time: ^round_end, players: players}} =
             GE.continue_game(game, client, kind: @kind)

    assert players == %{}
    assert {:error, %Minos.Error{code: :exists}} = GE.continue_game(game, client, kind: @kind)

    assert {:ok, %GE.Game{players: %{"ariadne" => %{joined_round: 1}}}} =
             GE.join(id, "ariadne", client)

    assert {:ok, 1} = GE.register_action(id, "ariadne", %{move: "north"}, client)

    assert {:ok, %GE.Game{id: ^id, registered_actions: %{"ariadne" => %{"move" => "north"}}}} =
             GE.get_game(id, TestCluster.client([1]))
  end
end

defmodule Minos.GameSessionTest do
  @moduledoc """
  The seed's cluster test ("game session is restarted on another node"),
  against a real three-node minos cluster started by scripts/cluster.sh:
  a minotaur game owned by node 1, players joined and actions registered,
  node 1 stopped (SIGTERM, or SIGKILL), then ONE call through node 2 must
  answer the game with its actions: no sleep, no retry, no wait_until.
  Each scenario runs 20 times; node 1 is restarted in between (setup waits
  for it by condition).
  """
  use ExUnit.Case, async: false

  alias Minos.{TestCluster, TestPlacement}

  @iterations 20
  @actions %{"ariadne" => %{"move" => "north"}, "theseus" => %{"move" => "west"}}

  setup_all do
    TestCluster.ensure_started!()
  end

  setup %{test: test} do
    # Not part of the scenario: the previous iteration stopped node 1.
    TestCluster.ensure_all_up!()
    mode = if test |> Atom.to_string() |> String.contains?("SIGKILL"), do: "KILL", else: "TERM"
    index = System.unique_integer([:positive])
    game = start_game_on_node1(TestPlacement.id_on(1, "#{mode}-#{index}"))
    %{game: game}
  end

  defp start_game_on_node1(id) do
    client = TestCluster.client([1, 2, 3])

    assert {:ok, %Minos.Session{id: ^id, owner: 1}} =
             Minos.start_session(client, id, kind: "minotaur")

    for {player, action} <- @actions do
      assert {:ok, %Minos.Reply{owner: 1}} = Minos.call(client, id, %{op: "join", player: player})

      assert {:ok, %Minos.Reply{reply: %{"registered" => _}, owner: 1}} =
               Minos.call(client, id, %{op: "register_action", player: player, action: action})
    end

    %{id: id}
  end

  # The one call through node 2, and what it must answer.
  defp assert_served_elsewhere_with_its_state(game) do
    node2 = TestCluster.client([2])
    result = Minos.call(node2, game.id, %{op: "get_game"}, timeout: 10_000)

    assert {:ok, %Minos.Reply{reply: %{"id" => game_id} = reply, owner: owner, epoch: epoch}} =
             result

    assert game_id == game.id
    assert reply["registered_actions"] == @actions
    assert Map.keys(reply["players"]) == Map.keys(@actions)
    assert owner in [2, 3], "served by node #{owner}, expected another node than 1"
    assert epoch > 1
  end

  for i <- 1..@iterations do
    test "game session is restarted on another node after SIGTERM of node 1 (#{i}/#{@iterations})",
         %{game: game} do
      TestCluster.term!(1)
      assert_served_elsewhere_with_its_state(game)
    end

    test "game session is restarted on another node after SIGKILL of node 1 (#{i}/#{@iterations})",
         %{game: game} do
      TestCluster.kill!(1)
      assert_served_elsewhere_with_its_state(game)
    end
  end
end

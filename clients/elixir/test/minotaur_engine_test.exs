defmodule Minotaur.GameEngineTest do
  @moduledoc "The example (examples/minotaur_engine.ex) against the real cluster, the seed's REPL session."
  use ExUnit.Case, async: false

  alias Minotaur.GameEngine, as: GE
  alias Minos.TestCluster

  setup_all do
    TestCluster.ensure_started!()
  end

  setup do
    TestCluster.ensure_all_up!()
    %{client: TestCluster.client()}
  end

  test "continue_game, join, register_action, get_game; a game after its node stopped", %{
    client: client
  } do
    round_end = DateTime.add(DateTime.utc_now(), 1, :day) |> DateTime.truncate(:second)
    id = Minos.TestPlacement.id_on(3, "ENGINE")
    game = %GE.Game{id: id, round_end_time: round_end}

    assert {:ok, %GE.Game{id: ^id, round: 1, round_end_time: ^round_end, players: players}} =
             GE.continue_game(game, client)

    assert players == %{}
    assert {:error, %Minos.Error{code: :exists}} = GE.continue_game(game, client)

    assert {:ok, %GE.Game{players: %{"ariadne" => %{joined_round: 1}}}} =
             GE.join(id, "ariadne", client)

    assert {:ok, 1} = GE.register_action(id, "ariadne", %{move: "north"}, client)

    TestCluster.term!(3)

    assert {:ok, %GE.Game{id: ^id, registered_actions: %{"ariadne" => %{"move" => "north"}}}} =
             GE.get_game(id, TestCluster.client([1]))

    assert {:error, %Minos.Error{code: :not_found}} = GE.get_game("NO-SUCH-GAME", client)
  end
end

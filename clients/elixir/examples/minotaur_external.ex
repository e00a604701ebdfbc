defmodule Minotaur.GameEngine.Handler do
  @moduledoc """
  The seed's game logic in Elixir, as a minos external handler: what the
  Horde version's `Minotaur.GameEngine.SessionServer` (a GenServer holding
  the game in its memory) did, as callbacks minos calls with the committed
  game. Served by `Minos.ExternalHandler.Server` in the app beside each
  node, for the kind `minotaur_ex`:

      # in the app's supervision tree, on every host
      {Minos.ExternalHandler.Server, handler: Minotaur.GameEngine.Handler, port: 4001}

      # and its node
      minos serve ... --external-kind minotaur_ex=http://127.0.0.1:4001/minos

  The clients use `Minotaur.GameEngine` (`examples/minotaur_engine.ex`)
  with `kind: "minotaur_ex"`; the messages and replies are those of the
  Rust `minotaur` kind:

    * `%{"op" => "get_game"}`: answers the game (a read: nothing is committed);
    * `%{"op" => "join", "player" => p}`: adds the player (joining again
      changes nothing); answers the game;
    * `%{"op" => "register_action", "player" => p, "action" => a}`: the
      player's action for this round (a player who has not joined is
      refused); answers `%{registered: n}`.

  The round timer is the session's deadline, `round_end_time`: when it
  passes, minos calls `on_deadline/2` on whatever node owns the game then,
  and the round advances (the next one ends a round's length later,
  `config :minotaur, :round_duration_ms`, one day by default). Where the
  seed's SessionServer kept a `Process.send_after` timer in its memory, the
  timer here is in the committed state, so it survives a failover.
  """
  @behaviour Minos.ExternalHandler

  alias Minotaur.GameEngine.Game

  @player_name_max 128
  @setup_fields ~w(round_end_time world round)

  @impl true
  def create(ctx, initial) do
    with {:ok, setup} <- setup(initial),
         {:ok, round_end_time} <- setup_time(setup["round_end_time"], ctx.now),
         {:ok, round} <- setup_round(setup["round"]) do
      game = %Game{
        id: ctx.session,
        round_end_time: round_end_time,
        world: setup["world"],
        round: round
      }

      {:ok, game, game.round_end_time}
    end
  end

  @impl true
  def handle(_ctx, state, msg) do
    game = Game.from_state(state)

    case msg do
      %{"op" => "get_game"} when map_size(msg) == 1 ->
        {:read, game}

      %{"op" => "join", "player" => player} when map_size(msg) == 2 ->
        join(game, player)

      %{"op" => "register_action", "player" => player, "action" => action}
      when map_size(msg) == 3 ->
        register_action(game, player, action)

      _ ->
        {:error, "not a minotaur message: #{inspect(msg, printable_limit: 200)}"}
    end
  end

  @impl true
  def on_deadline(ctx, state) do
    game = Game.from_state(state)

    # A timer that fires early (a clock behind the one that set it) ends
    # nothing, so a round ends exactly once.
    if game.round_end_time == nil or DateTime.compare(ctx.now, game.round_end_time) == :lt do
      {:ok, game, game.round_end_time}
    else
      # The seed pushes the round's result to the players here (I/O is
      # allowed; it may run more than once, see Minos.ExternalHandler).
      game = %Game{
        game
        | round: game.round + 1,
          registered_actions: %{},
          round_end_time: round_end_after(ctx.now)
      }

      {:ok, game, game.round_end_time}
    end
  end

  defp join(game, player) do
    with :ok <- check_player(player) do
      if Map.has_key?(game.players, player) do
        {:read, game}
      else
        game = %Game{game | players: Map.put(game.players, player, %{joined_round: game.round})}
        {:ok, game, game, game.round_end_time}
      end
    end
  end

  defp register_action(game, player, action) do
    if is_binary(player) and Map.has_key?(game.players, player) do
      game = %Game{game | registered_actions: Map.put(game.registered_actions, player, action)}
      {:ok, %{registered: map_size(game.registered_actions)}, game, game.round_end_time}
    else
      {:error, "player #{inspect(player)} has not joined game #{game.id}"}
    end
  end

  defp check_player(player) when is_binary(player) and player != "" do
    if byte_size(player) <= @player_name_max,
      do: :ok,
      else:
        {:error, "player name is #{byte_size(player)} bytes long; at most #{@player_name_max}"}
  end

  defp check_player(player),
    do: {:error, "player: a non-empty name is needed, got #{inspect(player)}"}

  defp setup(nil), do: {:ok, %{}}

  defp setup(%{} = setup) do
    case Map.keys(setup) -- @setup_fields do
      [] -> {:ok, setup}
      unknown -> {:error, "not a minotaur game setup: unknown #{Enum.join(unknown, ", ")}"}
    end
  end

  defp setup(other), do: {:error, "not a minotaur game setup: #{inspect(other)}"}

  defp setup_time(nil, now), do: {:ok, round_end_after(now)}

  defp setup_time(text, _now) when is_binary(text) do
    case DateTime.from_iso8601(text) do
      {:ok, time, _} -> {:ok, time}
      _ -> {:error, "round_end_time: not an RFC 3339 time: #{inspect(text)}"}
    end
  end

  defp setup_time(other, _now), do: {:error, "round_end_time: not a time: #{inspect(other)}"}

  defp setup_round(nil), do: {:ok, 1}
  defp setup_round(round) when is_integer(round) and round >= 1, do: {:ok, round}
  defp setup_round(other), do: {:error, "round starts at 1, got #{inspect(other)}"}

  defp round_end_after(now) do
    DateTime.add(
      now,
      Application.get_env(:minotaur, :round_duration_ms, 86_400_000),
      :millisecond
    )
  end
end

defmodule Minotaur.GameEngine do
  @moduledoc """
  The Minotaur game engine of a Phoenix + Horde application, on minos.

  With Horde, `continue_game/1` started a `SessionServer` process under a
  `Horde.DynamicSupervisor` and `get_game/1` called it; when its node went
  down, Horde was meant to start it again on another node, from the state
  given at start. Here the game is a minos session of kind `"minotaur"`:
  minos runs it on one node, commits every change through Raft, and moves it
  with its last committed state when that node stops or dies. A call made
  meanwhile waits for the move (up to its timeout) instead of failing.

  The client comes from the application environment
  (`config :minotaur, :minos, nodes: [...], token_file: ...`), or is given
  as the last argument.

  Two kinds run the same game: `"minotaur"`, the rules in Rust compiled
  into every node (`src/handlers/minotaur.rs`), and `"minotaur_ex"`, the
  rules in Elixir (`Minotaur.GameEngine.Handler`, served by the app beside
  each node). `continue_game/3` takes `kind:` (default
  `config :minotaur, :kind`, else `"minotaur"`); the other functions work
  on a game of either kind.
  """

  defmodule Game do
    @moduledoc "The game, as in the seed's `%Minotaur.GameEngine.Game{}`."
    defstruct [:id, :round_end_time, world: nil, players: %{}, registered_actions: %{}, round: 1]

    @type t :: %__MODULE__{
            id: String.t(),
            round_end_time: DateTime.t() | nil,
            world: term(),
            players: %{String.t() => %{joined_round: pos_integer()}},
            registered_actions: %{String.t() => term()},
            round: pos_integer()
          }

    @doc false
    def from_state(%{"id" => id} = state) do
      round_end_time =
        case DateTime.from_iso8601(state["round_end_time"] || "") do
          {:ok, time, _} -> time
          _ -> nil
        end

      players =
        Map.new(state["players"] || %{}, fn {name, p} ->
          {name, %{joined_round: p["joined_round"]}}
        end)

      %__MODULE__{
        id: id,
        round_end_time: round_end_time,
        world: state["world"],
        players: players,
        registered_actions: state["registered_actions"] || %{},
        round: state["round"] || 1
      }
    end
  end

  @call_timeout 10_000

  @doc """
  Starts the game (was: `Horde.DynamicSupervisor.start_child(SessionSupervisor, spec)`).
  Returns `{:ok, %Game{}}`; a game that exists already is `{:error, %Minos.Error{code: :exists}}`.
  Options: `kind:` (`"minotaur"` or `"minotaur_ex"`, see the module doc).
  """
  @spec continue_game(Game.t(), Minos.Client.t(), keyword()) ::
          {:ok, Game.t()} | {:error, Minos.Error.t()}
  def continue_game(%Game{} = game, client \\ client(), opts \\ []) do
    kind =
      Keyword.get_lazy(opts, :kind, fn -> Application.get_env(:minotaur, :kind, "minotaur") end)

    setup = %{round_end_time: game.round_end_time, world: game.world, round: game.round}
    setup = setup |> Enum.reject(fn {_k, v} -> is_nil(v) end) |> Map.new()

    with {:ok, session} <- Minos.start_session(client, game.id, kind: kind, state: setup) do
      {:ok, Game.from_state(game_state(session.state))}
    end
  end

  # An external kind's committed state is {"state": game, "deadline": t}
  # (docs/external-handlers.md); a Rust kind's is the game itself.
  defp game_state(%{"state" => %{"id" => _} = game, "deadline" => _}), do: game
  defp game_state(game), do: game

  @doc "The game with id `id`, from its live owner (was: `GenServer.call(via(id), :get_game)`)."
  @spec get_game(String.t(), Minos.Client.t()) :: {:ok, Game.t()} | {:error, Minos.Error.t()}
  def get_game(id, client \\ client()) do
    with {:ok, %Minos.Reply{reply: state}} <-
           Minos.call(client, id, %{op: "get_game"}, timeout: @call_timeout) do
      {:ok, Game.from_state(state)}
    end
  end

  @doc "Adds `player` to the game; answers the game."
  @spec join(String.t(), String.t(), Minos.Client.t()) ::
          {:ok, Game.t()} | {:error, Minos.Error.t()}
  def join(id, player, client \\ client()) do
    with {:ok, %Minos.Reply{reply: state}} <-
           Minos.call(client, id, %{op: "join", player: player}, timeout: @call_timeout) do
      {:ok, Game.from_state(state)}
    end
  end

  @doc "Registers `player`'s action for this round; answers how many are registered."
  @spec register_action(String.t(), String.t(), term(), Minos.Client.t()) ::
          {:ok, non_neg_integer()} | {:error, Minos.Error.t()}
  def register_action(id, player, action, client \\ client()) do
    msg = %{op: "register_action", player: player, action: action}

    with {:ok, %Minos.Reply{reply: %{"registered" => n}}} <-
           Minos.call(client, id, msg, timeout: @call_timeout) do
      {:ok, n}
    end
  end

  defp client do
    Minos.Client.new(Application.get_env(:minotaur, :minos, nodes: ["127.0.0.1:7101"]))
  end
end

defmodule Minos.ExternalHandler do
  @moduledoc """
  Session logic in Elixir: a behaviour for the code of a session kind that
  minos runs through an app beside each node (the protocol is
  `docs/external-handlers.md` in the repository).

  Start `Minos.ExternalHandler.Server` with your module in the app beside
  each node and give that node `--external-kind KIND=http://127.0.0.1:PORT/minos`:
  for every session of `KIND` the node owns, minos sends the app the
  committed state and the message, the server calls your module, and minos
  commits what it returns (with the owner's epoch and version) before the
  caller gets the reply.

      defmodule Counter do
        @behaviour Minos.ExternalHandler

        @impl true
        def create(_ctx, initial), do: {:ok, %{count: (initial || %{})["count"] || 0}, nil}

        @impl true
        def handle(_ctx, state, %{"op" => "get"}), do: {:read, state["count"]}

        def handle(_ctx, state, %{"op" => "add", "n" => n}) when is_integer(n) do
          count = state["count"] + n
          {:ok, count, %{count: count}, nil}
        end

        def handle(_ctx, _state, msg), do: {:error, "not a counter message: \#{inspect(msg)}"}

        @impl true
        def on_deadline(_ctx, state), do: {:ok, state, nil}
      end

  ## What the callbacks get and give

  `state` is what the last callback returned, as JSON gave it back: maps
  with **string keys**, times as strings (`Minos.JSON` encodes what you
  return: maps with atom or string keys, structs, `DateTime`s). It is the
  session's committed state, read by minos from its table: the truth,
  whichever node ran the session before. An app may cache sessions in
  memory, but must not trust that cache over `state`.

  A `deadline` is a `DateTime` (the session's next timer: when it passes,
  minos calls `on_deadline/2`, on whatever node owns the session then) or
  `nil` (no timer).

  A refusal (`{:error, reason}`) commits nothing; the caller gets
  `{:error, %Minos.Error{code: :rejected, message: reason}}`. A callback
  that raises, or returns anything else, is answered as a 500 (the caller
  gets `:unavailable`, nothing is committed) and logged; the server goes on.

  ## I/O

  A callback may do I/O (push to players, call services): the committed
  state is what survives failover. A callback can run more than once for
  one change (its answer may be dropped: the node lost the session, timed
  out, or died before committing; the call then runs again on the next
  owner), so make side effects idempotent, for example by carrying
  `ctx.version`.
  """

  defmodule Context do
    @moduledoc """
    What minos says about the request, beside the state:

      * `kind`: the session kind;
      * `session`: the session id;
      * `epoch`: the owner's epoch (`0` for a create: the session has no
        owner yet);
      * `version`: the version of the state in the request (`0` for a create);
      * `owner`: the id of the node that sent the request;
      * `now`: the time of the request (a `DateTime`, read once by minos:
        use it rather than the app's clock, so that every node agrees);
      * `deadline`: the session's current timer (`nil`: none; always `nil`
        for a create).
    """
    defstruct [:kind, :session, :epoch, :version, :owner, :now, :deadline]

    @type t :: %__MODULE__{
            kind: String.t(),
            session: String.t(),
            epoch: non_neg_integer(),
            version: non_neg_integer(),
            owner: pos_integer(),
            now: DateTime.t(),
            deadline: DateTime.t() | nil
          }
  end

  @type ctx :: Context.t()
  @type state :: term()
  @type deadline :: DateTime.t() | nil
  @type reason :: String.t()

  @doc """
  The first state of a new session, from what its creator sent as `state`
  (`nil` if nothing). `{:error, reason}` creates nothing.
  """
  @callback create(ctx(), initial :: term()) :: {:ok, state(), deadline()} | {:error, reason()}

  @doc """
  Answers the caller's `msg`:

    * `{:ok, reply, new_state, deadline}`: commits `new_state` and its timer,
      then `reply` goes to the caller;
    * `{:read, reply}`: commits nothing and keeps the timer (a read);
    * `{:error, reason}`: a refusal, nothing changes.
  """
  @callback handle(ctx(), state(), msg :: term()) ::
              {:ok, reply :: term(), state(), deadline()}
              | {:read, reply :: term()}
              | {:error, reason()}

  @doc """
  The session's timer passed: the state after it fired, and the next timer.
  `{:error, reason}` commits nothing; minos tries again a second later.
  """
  @callback on_deadline(ctx(), state()) :: {:ok, state(), deadline()} | {:error, reason()}
end

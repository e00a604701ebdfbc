defmodule Minos do
  @moduledoc """
  Client of a minos cluster: sessions (a game, a
  workflow) that live on one node at a time and are restarted on another,
  with their last committed state, when that node stops or dies.

      client = Minos.Client.new(nodes: ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"],
                                token_file: ".minos-cluster/client.token")
      {:ok, session} = Minos.start_session(client, "ABC", kind: "minotaur", state: %{})
      {:ok, %Minos.Reply{reply: game}} = Minos.call(client, "ABC", %{op: "join", player: "ariadne"})
      {:ok, %Minos.Session{owner: owner}} = Minos.get(client, "ABC")
      Minos.list(client, owner: 2) |> Enum.map(& &1.id)

  Every function returns `{:ok, value}` or `{:error, %Minos.Error{code:,
  message:, status:}}` (see `Minos.Error` for the codes), except `list/2`,
  a lazy `Stream` that raises `Minos.Error`. Nothing raises on a node's bad
  answer: it becomes `:bad_answer`.

  Session ids are 1 to 128 characters; the node checks them
  (`:invalid_id`). JSON is handled by `Minos.JSON`: give maps with atom or
  string keys; answers come back with string keys.
  """

  alias Minos.{Client, Error, Reply, Session, Page, Cluster}

  @doc """
  Creates the session `id`.

  Options: `kind:` (default `"kv"`; `"minotaur"` is the seed's game) and
  `state:` (its first state; for `"minotaur"` optional `round_end_time`,
  `world` and `round`).

  Errors include `:exists`, `:unknown_kind`, `:invalid_id`, `:rejected` (the
  kind refused the state) and `:state_too_large`. A create is not repeated
  on another node once sent: a broken connection gives `:outcome_unknown`.
  """
  @spec start_session(Client.t(), String.t(), keyword()) ::
          {:ok, Session.t()} | {:error, Error.t()}
  def start_session(%Client{} = client, id, opts \\ []) when is_binary(id) do
    body =
      %{"id" => id}
      |> put_present("kind", Keyword.get(opts, :kind))
      |> put_present("state", Keyword.get(opts, :state))

    client
    |> Client.request(:post, "/v1/sessions", body: body, repeatable: false)
    |> decode(&Session.from_json/1)
  end

  @doc """
  Reads the session `id` (a linearizable read: it sees every write
  acknowledged before it). `:not_found` if there is none.
  """
  @spec get(Client.t(), String.t()) :: {:ok, Session.t()} | {:error, Error.t()}
  def get(%Client{} = client, id) when is_binary(id) do
    client |> Client.request(:get, "/v1/sessions/" <> segment(id)) |> decode(&Session.from_json/1)
  end

  @doc """
  Sends `msg` to the session `id` and returns its reply, run by the
  session's live owner: `{:ok, %Minos.Reply{reply:, owner:, epoch:}}`.

  Options:

    * `timeout:` milliseconds the node may wait while the session moves
      (1..60000, default 5000). A call that could not run in that time is
      `:unavailable` (it did not run);
    * `key:` the idempotency key. By default every call gets a fresh one,
      so the call is applied at most once even when the node retries it
      on a new owner, or this client repeats it on another node after a
      broken connection. Pass your own string to repeat a call safely
      later, or `key: nil` to send none (a broken connection then gives
      `:outcome_unknown`).

  `:outcome_unknown` from the node means the call may or may not have run;
  it is returned as is, never retried. `:rejected` means the session's
  handler refused the message (nothing changed).
  """
  @spec call(Client.t(), String.t(), term(), keyword()) :: {:ok, Reply.t()} | {:error, Error.t()}
  def call(%Client{} = client, id, msg, opts \\ []) when is_binary(id) do
    timeout = Keyword.get(opts, :timeout, 5_000)
    key = Keyword.get(opts, :key, :auto)

    with :ok <- check_timeout(timeout), {:ok, key} <- call_key(key) do
      headers = if key, do: [{"idempotency-key", key}], else: []

      client
      |> Client.request(:post, "/v1/sessions/" <> segment(id) <> "/call",
        body: msg,
        query: [timeout_ms: timeout],
        headers: headers,
        repeatable: key != nil,
        timeout: max(client.timeout, timeout + 2_000)
      )
      |> decode(fn
        %{"reply" => reply, "owner" => owner, "epoch" => epoch} ->
          {:ok, %Reply{reply: reply, owner: owner, epoch: epoch}}

        _ ->
          :error
      end)
    end
  end

  @doc """
  A fresh idempotency key, as `call/4` makes one by default.

      iex> key = Minos.new_key()
      iex> key =~ ~r/^[A-Za-z0-9_-]{22}$/
      true
      iex> key == Minos.new_key()
      false
  """
  @spec new_key() :: String.t()
  def new_key, do: Base.url_encode64(:crypto.strong_rand_bytes(16), padding: false)

  defp check_timeout(t) when is_integer(t) and t >= 1 and t <= 60_000, do: :ok

  defp check_timeout(t),
    do: {:error, Error.new(:invalid_argument, "timeout: must be 1..60000 ms, got #{inspect(t)}")}

  defp call_key(:auto), do: {:ok, new_key()}
  defp call_key(nil), do: {:ok, nil}
  defp call_key(key) when is_binary(key), do: {:ok, key}

  defp call_key(other),
    do:
      {:error,
       Error.new(:invalid_argument, "key: must be a string or nil, got #{inspect(other)}")}

  @doc """
  Stops and deletes the session `id` (needs an `admin` token: `:forbidden`
  otherwise). Returns `{:ok, id}`.
  """
  @spec stop_session(Client.t(), String.t()) :: {:ok, String.t()} | {:error, Error.t()}
  def stop_session(%Client{} = client, id) when is_binary(id) do
    client
    |> Client.request(:delete, "/v1/sessions/" <> segment(id), repeatable: false)
    |> decode(fn
      %{"deleted" => deleted} -> {:ok, deleted}
      _ -> :error
    end)
  end

  @doc """
  All sessions in id order, as a lazy `Stream` over the pages: a page of
  `limit:` sessions (default 100, at most 1000) is fetched when the stream
  needs it, so `Enum.take(stream, 5)` asks for one page only.

  Options: `owner:` (only that node's sessions), `after:` (start after this
  id), `limit:` (page size).

  A page that fails raises `Minos.Error` (use `list_page/2` to get pages as
  `{:ok, _}` / `{:error, _}`).

      Minos.list(client, owner: 1) |> Stream.map(& &1.id) |> Enum.to_list()
  """
  @spec list(Client.t(), keyword()) :: Enumerable.t()
  def list(%Client{} = client, opts \\ []) do
    Stream.resource(
      fn -> Keyword.get(opts, :after, :start) end,
      fn
        :done ->
          {:halt, :done}

        after_id ->
          page_opts =
            if after_id == :start,
              do: Keyword.delete(opts, :after),
              else: Keyword.put(opts, :after, after_id)

          case list_page(client, page_opts) do
            {:ok, %Page{sessions: sessions, next: nil}} -> {sessions, :done}
            {:ok, %Page{sessions: sessions, next: next}} -> {sessions, next}
            {:error, error} -> raise error
          end
      end,
      fn _ -> :ok end
    )
  end

  @doc """
  One page of sessions: `{:ok, %Minos.Page{sessions:, next:}}`. Takes the
  options of `list/2`; pass `next` as `after:` for the following page.
  """
  @spec list_page(Client.t(), keyword()) :: {:ok, Page.t()} | {:error, Error.t()}
  def list_page(%Client{} = client, opts \\ []) do
    query = for key <- [:owner, :after, :limit], Keyword.has_key?(opts, key), do: {key, opts[key]}

    client
    |> Client.request(:get, "/v1/sessions", query: query)
    |> decode(fn
      %{"sessions" => sessions, "next" => next} when is_list(sessions) ->
        decoded = Enum.map(sessions, &Session.from_json/1)

        if Enum.all?(decoded, &match?({:ok, _}, &1)),
          do: {:ok, %Page{sessions: Enum.map(decoded, &elem(&1, 1)), next: next}},
          else: :error

      _ ->
        :error
    end)
  end

  @doc """
  The cluster as the answering node sees it: leader, nodes and their
  status, session counts (`Minos.Cluster`).
  """
  @spec cluster(Client.t()) :: {:ok, Cluster.t()} | {:error, Error.t()}
  def cluster(%Client{} = client) do
    client |> Client.request(:get, "/v1/cluster") |> decode(&Cluster.from_json/1)
  end

  @doc """
  Drains node `node` (an integer id): it takes no new sessions and hands
  its sessions to the others, which then answer their calls. Needs an
  `admin` token. `{:ok, %{moved: n, skipped: m}}`; `:no_such_node` for an
  unknown id.
  """
  @spec drain(Client.t(), pos_integer()) ::
          {:ok, %{moved: non_neg_integer(), skipped: non_neg_integer()}} | {:error, Error.t()}
  def drain(%Client{} = client, node) when is_integer(node) do
    client
    |> Client.request(:post, "/v1/nodes/#{node}/drain", repeatable: false)
    |> decode(fn
      %{"moved" => moved, "skipped" => skipped} -> {:ok, %{moved: moved, skipped: skipped}}
      _ -> :error
    end)
  end

  @doc "Undoes `drain/2`: node `node` takes new sessions again (admin)."
  @spec undrain(Client.t(), pos_integer()) :: {:ok, map()} | {:error, Error.t()}
  def undrain(%Client{} = client, node) when is_integer(node) do
    client
    |> Client.request(:post, "/v1/nodes/#{node}/undrain", repeatable: false)
    |> decode(&{:ok, &1})
  end

  defp put_present(map, _key, nil), do: map
  defp put_present(map, key, value), do: Map.put(map, key, value)

  defp segment(id), do: URI.encode(id, &URI.char_unreserved?/1)

  # An answer: 2xx decoded by `fun` (`{:ok, v}` or `:error`), anything else
  # an error from its body.
  defp decode({:error, %Error{}} = error, _fun), do: error

  defp decode({:ok, status, body}, fun) when status in 200..299 do
    with {:ok, json} <- Minos.JSON.decode(body), {:ok, value} <- fun.(json) do
      {:ok, value}
    else
      _ ->
        {:error, Error.new(:bad_answer, "unexpected answer: #{Error.excerpt(body)}", status)}
    end
  end

  defp decode({:ok, status, body}, _fun), do: {:error, Error.from_answer(status, body)}
end

defmodule Minos.Client do
  @moduledoc """
  Where and how to reach a minos cluster: its nodes, a bearer token and
  timeouts. A plain struct: build it once, share it between processes.

      iex> client = Minos.Client.new(nodes: ["127.0.0.1:7101", "http://127.0.0.1:7102/"], token: "s3cret-token-value")
      iex> client.nodes
      ["127.0.0.1:7101", "127.0.0.1:7102"]
      iex> inspect(client) =~ "s3cret"
      false

  ## Failover

  Any node accepts any request (it forwards writes to the leader and calls
  to the session's owner), so the client sends each request to one node and
  moves on to the next of the list only when that node **cannot be
  reached**:

    * the connection could not be made (refused, timed out, unknown host):
      nothing was sent, so every request moves on;
    * the connection broke or timed out **after** the request was sent:
      only requests that are safe to repeat move on (reads, and calls with
      an idempotency key, which is the default: a repeated key is applied at
      most once). Any other request returns `:outcome_unknown` at once.

  An answer is never retried, whatever its status: a 503 `:unavailable`
  means the node tried (for a call: up to its `timeout:`) and nothing
  happened; `:outcome_unknown` means it may have.

  The node that last answered is tried first next time (kept in an
  `:atomics` counter shared by every copy of the struct).
  """

  @enforce_keys [:nodes]
  defstruct nodes: [], token: nil, timeout: 15_000, connect_timeout: 2_000, preferred: nil

  @type t :: %__MODULE__{
          nodes: [String.t()],
          token: String.t() | nil,
          timeout: pos_integer(),
          connect_timeout: pos_integer(),
          preferred: :atomics.atomics_ref()
        }

  @profile :minos

  @doc """
  A client of the cluster whose nodes are `nodes`.

  Options:

    * `:nodes` (required): `"host:port"` or `"http://host:port"` strings,
      tried in turn;
    * `:token`: sent as `Authorization: Bearer TOKEN` (a `client` token may
      create, read, list and call sessions; stopping sessions and draining
      nodes need an `admin` token);
    * `:token_file`: read the token from this file instead (surrounding
      whitespace is dropped), such as the `client.token` that
      `scripts/cluster.sh` writes;
    * `:timeout`: milliseconds to wait for an answer (default 15000; a call
      waits at least its own `timeout:` plus 2 s);
    * `:connect_timeout`: milliseconds to wait for a connection (default 2000).

  Raises `ArgumentError` for options it cannot use (a programming error,
  not a cluster's answer).

      iex> Minos.Client.new(nodes: [])
      ** (ArgumentError) Minos.Client.new/1 needs at least one node in :nodes
  """
  @spec new(keyword()) :: t()
  def new(opts) when is_list(opts) do
    nodes = opts |> Keyword.get(:nodes, []) |> List.wrap() |> Enum.map(&normalize/1)

    if nodes == [],
      do: raise(ArgumentError, "Minos.Client.new/1 needs at least one node in :nodes")

    %__MODULE__{
      nodes: nodes,
      token: token(opts),
      timeout: positive(opts, :timeout, 15_000),
      connect_timeout: positive(opts, :connect_timeout, 2_000),
      preferred: :atomics.new(1, signed: false)
    }
  end

  defp token(opts) do
    case {Keyword.get(opts, :token), Keyword.get(opts, :token_file)} do
      {nil, nil} ->
        nil

      {token, nil} when is_binary(token) ->
        token

      {nil, path} ->
        case File.read(path) do
          {:ok, text} -> String.trim(text)
          {:error, reason} -> raise ArgumentError, "cannot read :token_file #{path}: #{reason}"
        end

      _ ->
        raise ArgumentError, "give :token (a string) or :token_file, not both"
    end
  end

  defp positive(opts, key, default) do
    case Keyword.get(opts, key, default) do
      n when is_integer(n) and n > 0 ->
        n

      other ->
        raise ArgumentError, "#{inspect(key)} must be a positive integer, got #{inspect(other)}"
    end
  end

  defp normalize(node) when is_binary(node) do
    node =
      node |> String.trim() |> String.replace_prefix("http://", "") |> String.trim_trailing("/")

    case URI.new("http://" <> node) do
      {:ok, %URI{host: host, port: port, path: nil}} when host not in [nil, ""] and port > 0 ->
        node

      _ ->
        raise ArgumentError, "node addresses are \"host:port\", got #{inspect(node)}"
    end
  end

  defp normalize(other),
    do: raise(ArgumentError, "node addresses are \"host:port\" strings, got #{inspect(other)}")

  @doc """
  The node the next request goes to first: the one that answered last.

      iex> Minos.Client.new(nodes: ["127.0.0.1:7101", "127.0.0.1:7102"]) |> Minos.Client.preferred_node()
      "127.0.0.1:7101"
  """
  @spec preferred_node(t()) :: String.t()
  def preferred_node(%__MODULE__{nodes: nodes, preferred: ref}) do
    Enum.at(nodes, rem(:atomics.get(ref, 1), length(nodes)))
  end

  @doc false
  # Sends one request with failover; `{:ok, status, body}` for any answer.
  # opts: :body (a JSON term), :query, :headers, :repeatable, :timeout.
  @spec request(t(), :get | :post | :delete, String.t(), keyword()) ::
          {:ok, pos_integer(), binary()} | {:error, Minos.Error.t()}
  def request(%__MODULE__{} = client, method, path, opts \\ []) do
    with {:ok, body} <- encode_body(method, Keyword.get(opts, :body)) do
      first = rem(:atomics.get(client.preferred, 1), length(client.nodes))

      order =
        Enum.drop(Enum.with_index(client.nodes), first) ++
          Enum.take(Enum.with_index(client.nodes), first)

      query = Keyword.get(opts, :query, [])
      path = if query == [], do: path, else: path <> "?" <> URI.encode_query(query)
      timeout = Keyword.get(opts, :timeout, client.timeout)
      headers = headers(client, Keyword.get(opts, :headers, []))
      repeatable = Keyword.get(opts, :repeatable, method == :get)
      try_nodes(client, order, {method, path, headers, body, timeout}, repeatable, [])
    end
  end

  defp encode_body(:post, nil), do: {:ok, ""}
  defp encode_body(_, nil), do: {:ok, nil}

  defp encode_body(_, term) do
    case Minos.JSON.encode(term) do
      {:ok, text} -> {:ok, text}
      {:error, message} -> {:error, Minos.Error.new(:invalid_argument, message)}
    end
  end

  defp headers(client, extra) do
    auth =
      if client.token,
        do: [{~c"authorization", ~c"Bearer " ++ String.to_charlist(client.token)}],
        else: []

    [{~c"accept", ~c"application/json"} | auth] ++
      Enum.map(extra, fn {k, v} -> {String.to_charlist(k), String.to_charlist(v)} end)
  end

  defp try_nodes(_client, [], _request, _repeatable, failures) do
    reasons =
      failures |> Enum.reverse() |> Enum.map_join("; ", fn {node, why} -> "#{node}: #{why}" end)

    {:error, Minos.Error.new(:unreachable, "no node could be reached (#{reasons})")}
  end

  defp try_nodes(client, [{node, index} | rest], request, repeatable, failures) do
    case send_to(client, node, request) do
      {:ok, status, body} ->
        :atomics.put(client.preferred, 1, index)
        {:ok, status, body}

      {:not_sent, why} ->
        try_nodes(client, rest, request, repeatable, [{node, why} | failures])

      {:maybe_sent, why} when repeatable ->
        try_nodes(client, rest, request, repeatable, [{node, why} | failures])

      {:maybe_sent, why} ->
        {:error,
         Minos.Error.new(
           :outcome_unknown,
           "#{node}: #{why} after the request was sent; it may or may not have taken effect " <>
             "(not repeated: it is not safe to repeat)"
         )}
    end
  end

  defp send_to(client, node, {method, path, headers, body, timeout}) do
    url = String.to_charlist("http://" <> node <> path)

    request =
      case method do
        :post -> {url, headers, ~c"application/json", body}
        _ -> {url, headers}
      end

    http_options = [
      timeout: timeout,
      connect_timeout: client.connect_timeout,
      autoredirect: false
    ]

    case :httpc.request(method, request, http_options, [body_format: :binary], @profile) do
      {:ok, {{_version, status, _reason}, _headers, body}} -> {:ok, status, body}
      {:error, reason} -> classify(reason, timeout)
    end
  end

  defp classify({:failed_connect, info}, _timeout), do: {:not_sent, connect_reason(info)}

  defp classify(:invalid_uri, _), do: {:not_sent, "not a usable address"}
  defp classify({:malformed_url, _, _}, _), do: {:not_sent, "not a usable address"}

  defp classify(:socket_closed_remotely, _),
    do: {:maybe_sent, "connection closed before an answer"}

  defp classify(:timeout, timeout), do: {:maybe_sent, "no answer within #{timeout} ms"}
  defp classify(other, _), do: {:maybe_sent, "transport error #{inspect(other)}"}

  defp connect_reason(info) when is_list(info) do
    case List.keyfind(info, :inet, 0) do
      {:inet, _, :econnrefused} -> "connection refused"
      {:inet, _, :timeout} -> "connect timed out"
      {:inet, _, reason} -> "cannot connect (#{inspect(reason)})"
      nil -> "cannot connect (#{inspect(info)})"
    end
  end

  defp connect_reason(info), do: "cannot connect (#{inspect(info)})"

  @doc false
  def profile, do: @profile
end

defimpl Inspect, for: Minos.Client do
  def inspect(client, _opts) do
    token = if client.token, do: ", token: <redacted>", else: ""
    "#Minos.Client<nodes: #{Kernel.inspect(client.nodes)}#{token}>"
  end
end

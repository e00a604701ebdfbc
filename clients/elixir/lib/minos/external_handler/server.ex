defmodule Minos.ExternalHandler.Server do
  @moduledoc """
  Serves the external handler protocol (`docs/external-handlers.md`) for
  `Minos.ExternalHandler` modules, on OTP's own HTTP server (`:httpd`, in
  `:inets`).

      {:ok, _pid} = Minos.ExternalHandler.Server.start_link(handler: Minotaur.GameEngine.Handler, port: 4001)

  and the node beside it: `minos serve ... --external-kind minotaur_ex=http://127.0.0.1:4001/minos`.
  In a supervision tree: `{Minos.ExternalHandler.Server, handler: ..., port: ...}`.

  Options:

    * `:handler` (required): the module, for every kind; or a map of kind
      to module (`%{"game" => Game, "chat" => Chat}`), a request for
      another kind then being answered 400;
    * `:port` (required): the TCP port;
    * `:ip`: the address to listen on, default `{127, 0, 0, 1}` (minos
      sends the app no credentials: keep it on loopback);
    * `:path`: the path minos posts to, default `"/minos"` (others: 404);
    * `:max_body_bytes`: the largest request body, default 8 MiB (a
      request carries the state, at most `--max-state-bytes`, 1 MiB by
      default, and the message); a longer one is answered 413 unread.

  What it answers: `ping` with `{}`; `create`, `call` and `deadline` from
  the handler's callbacks, `epoch` and `version` echoed in every `call` and
  `deadline` answer; a refusal as 422 `{"error": reason}`; a request that is
  not the protocol's (not JSON, no `op`, a field missing or of the wrong
  type, an unknown `op` or kind) as 400 `{"error": why}`; a callback that
  raised or returned something else as 500 `{"error": why}` (logged). Every
  request gets an answer; no input crashes the server.
  """

  require Logger
  require Record

  alias Minos.ExternalHandler.Context

  Record.defrecordp(:mod, Record.extract(:mod, from_lib: "inets/include/httpd.hrl"))

  @default_max_body 8 * 1024 * 1024
  @config_key :minos_external_handler

  @doc "A child spec: started with `start_link/1`, one per port."
  def child_spec(opts) do
    %{
      id: {__MODULE__, Keyword.get(opts, :port)},
      start: {__MODULE__, :start_link, [opts]},
      type: :supervisor,
      shutdown: :infinity
    }
  end

  @doc """
  Starts the server, linked to the caller (an `:httpd` instance outside
  the `:inets` supervision tree: it stops with its parent). `{:ok, pid}`,
  or `{:error, reason}` (such as the port in use).
  """
  @spec start_link(keyword()) :: {:ok, pid()} | {:error, term()}
  def start_link(opts) when is_list(opts) do
    handlers = handlers!(Keyword.get(opts, :handler))
    port = Keyword.get(opts, :port)

    unless is_integer(port) and port > 0 and port < 65_536,
      do: raise(ArgumentError, ":port must be a TCP port (1..65535), got #{inspect(port)}")

    path = Keyword.get(opts, :path, "/minos")
    max_body = Keyword.get(opts, :max_body_bytes, @default_max_body)
    root = String.to_charlist(System.tmp_dir!())

    config = [
      port: port,
      bind_address: Keyword.get(opts, :ip, {127, 0, 0, 1}),
      server_name: ~c"minos-external-handler",
      server_root: root,
      document_root: root,
      modules: [__MODULE__],
      max_body_size: max_body,
      max_header_size: 16_384,
      max_uri_size: 4_096,
      # Kept-alive connections from the node: idle ones are closed after
      # 150 s, longer than the node's own idle limit, so the node is the
      # one that closes them (a request never meets a closing connection).
      keep_alive: true,
      keep_alive_timeout: 150,
      minos_external_handler: %{handlers: handlers, path: path}
    ]

    :inets.start(:httpd, config, :stand_alone)
  end

  @doc "Stops a server started with `start_link/1`; its port is free when this returns."
  @spec stop(pid()) :: :ok
  def stop(pid) when is_pid(pid) do
    ref = Process.monitor(pid)
    Process.unlink(pid)
    :inets.stop(:stand_alone, pid)

    receive do
      {:DOWN, ^ref, _, _, _} -> :ok
    end
  end

  defp handlers!(module) when is_atom(module) and module != nil do
    check_handler!(module)
    {:any, module}
  end

  defp handlers!(%{} = by_kind) when map_size(by_kind) > 0 do
    for {kind, module} <- by_kind do
      unless is_binary(kind),
        do: raise(ArgumentError, "handler kinds are strings, got #{inspect(kind)}")

      check_handler!(module)
    end

    {:by_kind, by_kind}
  end

  defp handlers!(other),
    do:
      raise(
        ArgumentError,
        ":handler must be a Minos.ExternalHandler module or a map of kind to module, got #{inspect(other)}"
      )

  defp check_handler!(module) do
    Code.ensure_loaded(module)

    missing =
      for {fun, arity} <- [create: 2, handle: 3, on_deadline: 2],
          not function_exported?(module, fun, arity),
          do: "#{fun}/#{arity}"

    if missing != [],
      do:
        raise(
          ArgumentError,
          "#{inspect(module)} is not a Minos.ExternalHandler (missing #{Enum.join(missing, ", ")})"
        )
  end

  # The :httpd module callback: every request comes here (no other module
  # is configured), and every request gets an answer.
  @doc false
  def unquote(:do)(mod_data) do
    # httpd writes an answer's head and body in two sends: with Nagle's
    # algorithm on, the body would wait for the node's delayed ACK (40 ms
    # on Linux) on every request. (httpd's socket_type options do not
    # reach the listen socket in OTP 25, so it is set here, per connection.)
    _ = :inet.setopts(mod(mod_data, :socket), nodelay: true)

    {status, answer} =
      try do
        config = :httpd_util.lookup(mod(mod_data, :config_db), @config_key)

        serve(
          config,
          mod(mod_data, :method),
          mod(mod_data, :request_uri),
          mod(mod_data, :entity_body)
        )
      catch
        kind, reason ->
          Logger.error(
            "Minos.ExternalHandler.Server: " <>
              Exception.format(kind, reason, __STACKTRACE__)
          )

          {500, %{"error" => "internal error of the app's server"}}
      end

    # A state or reply that is not JSON (a tuple, a pid) is the handler's
    # failure: a 500, logged, and nothing is committed.
    {status, body} =
      case Minos.JSON.encode(answer) do
        {:ok, text} ->
          {status, text}

        {:error, why} ->
          Logger.error("Minos.ExternalHandler.Server: the handler's answer is not JSON: #{why}")
          {500, ~s|{"error":"the handler's answer is not JSON (see the app's log)"}|}
      end

    head = [
      code: status,
      content_type: ~c"application/json",
      content_length: Integer.to_charlist(byte_size(body))
    ]

    {:proceed, [response: {:response, head, body}]}
  end

  defp serve(%{handlers: handlers, path: path}, method, uri, body) do
    request_path = uri |> List.to_string() |> String.split("?", parts: 2) |> hd()

    cond do
      request_path != path ->
        {404, %{"error" => "no such path: #{request_path} (this is #{path})"}}

      method != ~c"POST" ->
        {405, %{"error" => "only POST is served here"}}

      true ->
        body |> :erlang.iolist_to_binary() |> answer(handlers)
    end
  end

  @doc false
  # One request body (a binary) to {status, answer}: the whole protocol,
  # without HTTP. Public for the tests.
  @spec answer(binary(), {:any, module()} | {:by_kind, %{String.t() => module()}}) ::
          {pos_integer(), map()}
  def answer(body, handlers) when is_binary(body) do
    with {:ok, request} <- decode(body),
         {:ok, op} <- op(request) do
      if op == "ping", do: {200, %{}}, else: run(op, request, handlers)
    else
      {:bad, why} -> {400, %{"error" => why}}
    end
  end

  defp decode(body) do
    case Minos.JSON.decode(body) do
      {:ok, %{} = request} -> {:ok, request}
      {:ok, _} -> {:bad, "the request is not a JSON object"}
      {:error, _} -> {:bad, "the request is not JSON"}
    end
  end

  defp op(%{"op" => op}) when op in ["ping", "create", "call", "deadline"], do: {:ok, op}
  defp op(%{"op" => op}), do: {:bad, "unknown op #{inspect(op)}"}
  defp op(_), do: {:bad, "the request has no op"}

  defp run(op, request, handlers) do
    with {:ok, module} <- handler_for(request, handlers),
         {:ok, ctx} <- context(request),
         {:ok, args} <- args(op, request) do
      call_handler(op, module, ctx, args)
    else
      {:bad, why} -> {400, %{"error" => why}}
    end
  end

  defp handler_for(%{"kind" => kind}, {:any, module}) when is_binary(kind), do: {:ok, module}

  defp handler_for(%{"kind" => kind}, {:by_kind, by_kind}) when is_binary(kind) do
    case Map.fetch(by_kind, kind) do
      {:ok, module} -> {:ok, module}
      :error -> {:bad, "no handler for kind #{inspect(kind)} here"}
    end
  end

  defp handler_for(_, _), do: {:bad, "kind: a string is needed"}

  defp context(request) do
    with {:ok, session} <- field(request, "session", &is_binary/1, "a string"),
         {:ok, epoch} <- field(request, "epoch", &non_neg_integer?/1, "an integer >= 0"),
         {:ok, version} <- field(request, "version", &non_neg_integer?/1, "an integer >= 0"),
         {:ok, owner} <- field(request, "owner", &non_neg_integer?/1, "a node id"),
         {:ok, now} <- time(request, "now", :required),
         {:ok, deadline} <- time(request, "deadline", :optional) do
      {:ok,
       %Context{
         kind: request["kind"],
         session: session,
         epoch: epoch,
         version: version,
         owner: owner,
         now: now,
         deadline: deadline
       }}
    end
  end

  defp non_neg_integer?(value), do: is_integer(value) and value >= 0

  defp field(request, name, valid?, what) do
    case Map.fetch(request, name) do
      {:ok, value} ->
        if valid?.(value), do: {:ok, value}, else: {:bad, "#{name}: #{what} is needed"}

      :error ->
        {:bad, "#{name}: missing"}
    end
  end

  defp time(request, name, required) do
    case {Map.get(request, name), required} do
      {nil, :optional} ->
        {:ok, nil}

      {text, _} when is_binary(text) ->
        case DateTime.from_iso8601(text) do
          {:ok, time, _offset} -> {:ok, time}
          {:error, _} -> {:bad, "#{name}: not an RFC 3339 time: #{inspect(text)}"}
        end

      _ ->
        {:bad, "#{name}: an RFC 3339 time is needed"}
    end
  end

  defp args("create", request), do: {:ok, [Map.get(request, "initial")]}

  defp args("call", request) do
    with {:ok, state} <- present(request, "state"),
         {:ok, msg} <- present(request, "msg"),
         do: {:ok, [state, msg]}
  end

  defp args("deadline", request) do
    with {:ok, state} <- present(request, "state"), do: {:ok, [state]}
  end

  defp present(request, name) do
    case Map.fetch(request, name) do
      {:ok, value} -> {:ok, value}
      :error -> {:bad, "#{name}: missing"}
    end
  end

  defp call_handler(op, module, ctx, args) do
    fun = %{"create" => :create, "call" => :handle, "deadline" => :on_deadline}[op]

    result =
      try do
        {:returned, apply(module, fun, [ctx | args])}
      catch
        kind, reason -> {:crashed, Exception.format(kind, reason, __STACKTRACE__)}
      end

    case result do
      {:returned, returned} ->
        case to_answer(op, returned, ctx) do
          {:ok, status, answer} ->
            {status, answer}

          :error ->
            fail(
              module,
              fun,
              ctx,
              "returned #{inspect(returned, limit: 20, printable_limit: 200)}"
            )
        end

      {:crashed, formatted} ->
        fail(module, fun, ctx, "raised:\n" <> formatted)
    end
  end

  defp fail(module, fun, ctx, what) do
    Logger.error("#{inspect(module)}.#{fun} for session #{inspect(ctx.session)} #{what}")
    {500, %{"error" => "the handler failed (#{inspect(module)}.#{fun}; see the app's log)"}}
  end

  defp to_answer(_op, {:error, reason}, _ctx), do: {:ok, 422, %{"error" => reason_text(reason)}}

  defp to_answer("create", {:ok, state, deadline}, _ctx),
    do: with_deadline(%{"state" => state}, deadline)

  defp to_answer("call", {:ok, reply, state, deadline}, ctx),
    do: with_deadline(echo(ctx, %{"reply" => reply, "state" => state}), deadline)

  defp to_answer("call", {:read, reply}, ctx), do: {:ok, 200, echo(ctx, %{"reply" => reply})}

  defp to_answer("deadline", {:ok, state, deadline}, ctx),
    do: with_deadline(echo(ctx, %{"state" => state}), deadline)

  defp to_answer(_op, _other, _ctx), do: :error

  defp echo(ctx, answer), do: Map.merge(answer, %{"epoch" => ctx.epoch, "version" => ctx.version})

  defp with_deadline(answer, deadline) when is_nil(deadline) or is_struct(deadline, DateTime),
    do: {:ok, 200, Map.put(answer, "deadline", deadline)}

  defp with_deadline(_answer, _deadline), do: :error

  defp reason_text(reason) when is_binary(reason), do: reason
  defp reason_text(reason) when is_atom(reason), do: Atom.to_string(reason)
  defp reason_text(reason), do: inspect(reason)
end

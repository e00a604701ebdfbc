defmodule Minos.ExternalHandlerTest do
  @moduledoc """
  Minos.ExternalHandler.Server over HTTP, as a node would talk to it
  (docs/external-handlers.md): every op, the epoch and version echoed,
  refusals as 422, bad input as 400, failing handlers as 500, and the
  server alive after each. No cluster needed.
  """
  use ExUnit.Case, async: false
  import ExUnit.CaptureLog

  alias Minos.ExternalHandler.Server

  # Ports 17790.. (the cluster: 17701-17703, fake nodes: 17750.., the
  # cluster's apps: 17801-17803).
  @port 17790
  @by_kind_port 17791
  @spare_port 17792
  @now "2026-12-01T17:00:00.123Z"

  defmodule Counter do
    @moduledoc false
    # A handler with a branch for every answer the server must give.
    @behaviour Minos.ExternalHandler

    @impl true
    def create(ctx, initial) do
      case initial do
        %{"refuse" => why} -> {:error, why}
        %{"raise" => true} -> raise "create exploded"
        _ -> {:ok, %{count: 0, initial: initial, owner: ctx.owner}, DateTime.add(ctx.now, 60)}
      end
    end

    @impl true
    def handle(ctx, state, msg) do
      case msg do
        %{"op" => "get"} ->
          {:read, %{count: state["count"], deadline: ctx.deadline}}

        %{"op" => "add", "n" => n} when is_integer(n) ->
          count = state["count"] + n
          {:ok, %{count: count}, %{state | "count" => count}, ctx.deadline}

        %{"op" => "refuse"} ->
          {:error, "no: #{state["count"]}"}

        %{"op" => "refuse_atom"} ->
          {:error, :not_now}

        %{"op" => "raise"} ->
          raise ArgumentError, "handle exploded"

        %{"op" => "throw"} ->
          throw(:thrown)

        %{"op" => "bad_return"} ->
          :what

        %{"op" => "tuple_state"} ->
          {:ok, "r", {:not, :json}, nil}

        %{"op" => "bad_deadline"} ->
          {:ok, "r", state, "tomorrow"}

        %{"op" => "block"} ->
          # Tells the test it is running, then waits for its go: shows that
          # one slow session holds up no other.
          send(:persistent_term.get({__MODULE__, :test}), {:blocked, self()})

          receive do
            :go -> {:read, "unblocked"}
          after
            10_000 -> {:error, "never released"}
          end

        _ ->
          {:error, "unknown message"}
      end
    end

    @impl true
    def on_deadline(ctx, state) do
      if state["count"] < 0,
        do: {:error, "negative"},
        else: {:ok, %{state | "count" => state["count"] + 100}, DateTime.add(ctx.now, 60)}
    end
  end

  setup_all do
    start_supervised!({Server, handler: Counter, port: @port})
    start_supervised!({Server, handler: %{"counter" => Counter}, port: @by_kind_port})
    :ok
  end

  defp post(body, opts \\ []) do
    port = Keyword.get(opts, :port, @port)
    path = Keyword.get(opts, :path, "/minos")
    body = if is_binary(body), do: body, else: elem(Minos.JSON.encode(body), 1)
    url = ~c"http://127.0.0.1:#{port}#{path}"
    # A connection per request: httpc would queue a request behind a slow
    # one on a kept-alive connection.
    headers = [{~c"x-minos-kind", ~c"counter"}, {~c"connection", ~c"close"}]

    {:ok, {{_, status, _}, _headers, answer}} =
      :httpc.request(:post, {url, headers, ~c"application/json", body}, [timeout: 15_000],
        body_format: :binary
      )

    case Minos.JSON.decode(answer) do
      {:ok, json} -> {status, json}
      {:error, _} -> {status, answer}
    end
  end

  defp request(op, fields) do
    Map.merge(
      %{"op" => op, "kind" => "counter", "session" => "S1", "owner" => 2, "now" => @now},
      fields
    )
  end

  defp create(initial),
    do: request("create", %{"epoch" => 0, "version" => 0, "initial" => initial})

  defp call(msg, state, fields \\ %{}) do
    request(
      "call",
      Map.merge(
        %{"epoch" => 7, "version" => 3, "state" => state, "msg" => msg, "deadline" => nil},
        fields
      )
    )
  end

  defp state(count), do: %{"count" => count, "initial" => nil, "owner" => 2}

  test "ping answers an empty object" do
    assert post(%{"op" => "ping", "kind" => "counter"}) == {200, %{}}
  end

  test "create answers the first state and its deadline; a refused create is 422" do
    assert {200, %{"state" => state, "deadline" => deadline} = answer} =
             post(create(%{"seed" => 1}))

    assert state == %{"count" => 0, "initial" => %{"seed" => 1}, "owner" => 2}
    assert {:ok, time, 0} = DateTime.from_iso8601(deadline)
    assert DateTime.diff(time, ~U[2026-12-01 17:00:00.123Z], :millisecond) == 60_000
    refute Map.has_key?(answer, "epoch")

    assert {200, %{"state" => %{"initial" => nil}}} = post(Map.delete(create(nil), "initial"))

    assert post(create(%{"refuse" => "taken"})) == {422, %{"error" => "taken"}}
  end

  test "a write answers reply, state and deadline with the request's epoch and version" do
    deadline = "2026-12-02T09:30:00.000Z"

    assert {200, answer} =
             post(call(%{"op" => "add", "n" => 5}, state(1), %{"deadline" => deadline}))

    assert answer == %{
             "epoch" => 7,
             "version" => 3,
             "reply" => %{"count" => 6},
             "state" => state(6),
             "deadline" => "2026-12-02T09:30:00.000Z"
           }
  end

  test "a read answers the reply alone: no state, so nothing is committed" do
    assert {200, answer} =
             post(call(%{"op" => "get"}, state(4), %{"epoch" => 12, "version" => 40}))

    assert answer == %{
             "epoch" => 12,
             "version" => 40,
             "reply" => %{"count" => 4, "deadline" => nil}
           }
  end

  test "a refusal is 422 with the reason, whatever its type" do
    assert post(call(%{"op" => "refuse"}, state(3))) == {422, %{"error" => "no: 3"}}
    assert post(call(%{"op" => "refuse_atom"}, state(3))) == {422, %{"error" => "not_now"}}
  end

  test "deadline answers the new state and timer, epoch and version echoed; refused: 422" do
    fired =
      request("deadline", %{
        "epoch" => 4,
        "version" => 9,
        "state" => state(1),
        "deadline" => "2026-12-01T16:59:59.000Z"
      })

    assert {200,
            %{"epoch" => 4, "version" => 9, "state" => %{"count" => 101}, "deadline" => next}} =
             post(fired)

    assert {:ok, ~U[2026-12-01 17:01:00.123Z], 0} = DateTime.from_iso8601(next)

    assert post(%{fired | "state" => state(-1)}) == {422, %{"error" => "negative"}}
  end

  test "bad input is 400 with a reason, and the server answers the next request" do
    cases = [
      {"not json", "{nope", "not JSON"},
      {"not an object", "[1,2]", "not a JSON object"},
      {"no op", %{"kind" => "counter"}, "no op"},
      {"unknown op", request("explode", %{}), "unknown op \"explode\""},
      {"no kind", Map.delete(call(%{}, state(0)), "kind"), "kind"},
      {"no session", Map.delete(call(%{}, state(0)), "session"), "session: missing"},
      {"session not a string", call(%{}, state(0), %{"session" => 5}), "session: a string"},
      {"negative epoch", call(%{}, state(0), %{"epoch" => -1}), "epoch"},
      {"epoch a string", call(%{}, state(0), %{"epoch" => "7"}), "epoch"},
      {"no version", Map.delete(call(%{}, state(0)), "version"), "version: missing"},
      {"no now", Map.delete(call(%{}, state(0)), "now"), "now"},
      {"bad now", call(%{}, state(0), %{"now" => "yesterday"}), "RFC 3339"},
      {"bad deadline", call(%{}, state(0), %{"deadline" => 17}), "deadline"},
      {"call without msg", Map.delete(call(%{}, state(0)), "msg"), "msg: missing"},
      {"call without state", Map.delete(call(%{}, state(0)), "state"), "state: missing"},
      {"deadline without state", request("deadline", %{"epoch" => 1, "version" => 1}),
       "state: missing"}
    ]

    for {what, body, why} <- cases do
      assert {400, %{"error" => error}} = post(body), what
      assert error =~ why, "#{what}: #{error}"
    end

    assert {200, _} = post(call(%{"op" => "get"}, state(0)))
  end

  test "another path is 404, another method 405, a body over the limit 413" do
    assert {404, %{"error" => _}} = post(%{"op" => "ping"}, path: "/other")

    assert {:ok, {{_, 405, _}, _, _}} = :httpc.request(~c"http://127.0.0.1:#{@port}/minos")

    # Refused from its length alone, before the body is read (a client
    # sending one would see its connection closed under it).
    {:ok, socket} = :gen_tcp.connect({127, 0, 0, 1}, @port, [:binary, active: false])

    :ok =
      :gen_tcp.send(
        socket,
        "POST /minos HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" <>
          "content-length: #{9 * 1024 * 1024}\r\n\r\n{"
      )

    assert {:ok, "HTTP/1.1 413 " <> _} = :gen_tcp.recv(socket, 0, 5_000)
    :gen_tcp.close(socket)

    # Just under the limit (8 MiB) is served.
    blob = String.duplicate("x", 8 * 1024 * 1024 - 1024)

    assert {200, %{"reply" => %{"count" => 1}}} =
             post(call(%{"op" => "get"}, %{"count" => 1, "blob" => blob}))
  end

  test "a handler that raises, throws or answers what is not the protocol is 500, logged" do
    for {msg, logged} <- [
          {%{"op" => "raise"}, "handle exploded"},
          {%{"op" => "throw"}, ":thrown"},
          {%{"op" => "bad_return"}, "returned :what"},
          {%{"op" => "bad_deadline"}, "returned"},
          {%{"op" => "tuple_state"}, "not JSON"}
        ] do
      log =
        capture_log(fn ->
          assert {500, %{"error" => error}} = post(call(msg, state(0)))
          assert error =~ "app's log"
        end)

      assert log =~ logged, "#{inspect(msg)}: #{log}"
    end

    assert capture_log(fn -> assert {500, _} = post(create(%{"raise" => true})) end) =~
             "create exploded"

    assert {200, _} = post(call(%{"op" => "get"}, state(0)))
  end

  test "a slow session holds up no other" do
    :persistent_term.put({Counter, :test}, self())
    slow = Task.async(fn -> post(call(%{"op" => "block"}, state(0), %{"session" => "SLOW"})) end)
    assert_receive {:blocked, handler}, 5_000

    assert {200, %{"reply" => %{"count" => 2}}} = post(call(%{"op" => "get"}, state(2)))

    send(handler, :go)
    assert {200, %{"reply" => "unblocked"}} = Task.await(slow)
  end

  test "answers on a kept-alive connection do not wait for a delayed ACK" do
    # As a node sends them: one connection, TCP_NODELAY on the client's
    # side. With Nagle's algorithm on the server's side, every answer (head
    # and body: two writes) waits ~40 ms for the client's delayed ACK.
    {:ok, body} = Minos.JSON.encode(call(%{"op" => "get"}, state(1)))

    request =
      "POST /minos HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" <>
        "content-length: #{byte_size(body)}\r\n\r\n" <> body

    {:ok, socket} =
      :gen_tcp.connect({127, 0, 0, 1}, @port, [:binary, active: false, nodelay: true])

    n = 20
    started = System.monotonic_time(:microsecond)

    for _ <- 1..n do
      :ok = :gen_tcp.send(socket, request)
      assert {200, %{"reply" => %{"count" => 1}}} = read_answer(socket, "")
    end

    mean_ms = (System.monotonic_time(:microsecond) - started) / n / 1000
    :gen_tcp.close(socket)
    assert mean_ms < 20, "#{n} answers took #{mean_ms} ms each"
  end

  # One HTTP answer from a raw socket: {status, decoded JSON body}.
  defp read_answer(socket, acc) do
    with [head, rest] <- :binary.split(acc, "\r\n\r\n"),
         [_, status] <- Regex.run(~r/^HTTP\/1\.1 (\d+)/, head),
         [_, length] <- Regex.run(~r/content-length: *(\d+)/i, head),
         true <- byte_size(rest) >= String.to_integer(length) do
      {:ok, json} = Minos.JSON.decode(rest)
      {String.to_integer(status), json}
    else
      _ ->
        {:ok, data} = :gen_tcp.recv(socket, 0, 5_000)
        read_answer(socket, acc <> data)
    end
  end

  test "handlers by kind: another kind is 400" do
    assert {200, _} = post(call(%{"op" => "get"}, state(0)), port: @by_kind_port)

    assert {400, %{"error" => error}} =
             post(call(%{"op" => "get"}, state(0), %{"kind" => "chess"}), port: @by_kind_port)

    assert error =~ "no handler for kind \"chess\""
  end

  test "stop frees the port at once; bad options raise" do
    {:ok, pid} = Server.start_link(handler: Counter, port: @spare_port)

    # A second server on the port fails to start (linked, as any
    # start_link that fails: its caller gets the exit too).
    Process.flag(:trap_exit, true)
    assert {:error, _} = Server.start_link(handler: Counter, port: @spare_port)
    Process.flag(:trap_exit, false)
    assert {200, %{}} = post(%{"op" => "ping"}, port: @spare_port)

    assert :ok = Server.stop(pid)
    refute Process.alive?(pid)

    assert {:error, {:failed_connect, _}} =
             :httpc.request(~c"http://127.0.0.1:#{@spare_port}/minos")

    {:ok, pid} = Server.start_link(handler: Counter, port: @spare_port)
    assert {200, %{}} = post(%{"op" => "ping"}, port: @spare_port)
    Server.stop(pid)

    assert_raise ArgumentError, ~r/not a Minos.ExternalHandler/, fn ->
      Server.start_link(handler: String, port: @spare_port)
    end

    assert_raise ArgumentError, ~r/:port/, fn -> Server.start_link(handler: Counter) end
  end
end

defmodule Minos.FailoverTest do
  @moduledoc """
  The client moves on to the next node only when a node cannot be reached,
  and repeats a request whose connection broke after sending only when that
  is safe (reads; calls with their idempotency key).
  """
  use ExUnit.Case, async: false

  alias Minos.{Error, FakeNode, TestCluster}

  @call_reply ~s({"reply": {"ok": true}, "owner": 3, "epoch": 7})

  describe "against fake nodes" do
    test "a dead first node: the request goes to the next, which is then preferred" do
      dead = FakeNode.dead(0)
      live = FakeNode.start(1, fn _ -> {:reply, 200, @call_reply} end)
      client = Minos.Client.new(nodes: [dead, live], token: "tok-abcdefghijklmnop")

      assert {:ok, %Minos.Reply{reply: %{"ok" => true}, owner: 3, epoch: 7}} =
               Minos.call(client, "ABC", %{op: "get"})

      assert_received {:fake_request, _, %{method: "POST", headers: headers}}
      assert headers["authorization"] == "Bearer tok-abcdefghijklmnop"
      assert headers["content-type"] == "application/json"
      assert Minos.Client.preferred_node(client) == live
    end

    test "every node dead: :unreachable naming each node and why" do
      client = Minos.Client.new(nodes: [FakeNode.dead(0), FakeNode.dead(1)])

      assert {:error, %Error{code: :unreachable, status: nil, message: message}} =
               Minos.get(client, "ABC")

      assert message =~ "#{FakeNode.dead(0)}: connection refused"
      assert message =~ "#{FakeNode.dead(1)}: connection refused"
    end

    test "a connection closed after a read was sent: the read goes to the next node" do
      closing = FakeNode.start(0, fn _ -> :close end)

      session =
        ~s({"id": "ABC", "kind": "kv", "owner": 2, "epoch": 1, "version": 0, "status": "placed",
                   "state": {"a": 1}, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"})

      live = FakeNode.start(1, fn _ -> {:reply, 200, session} end)
      client = Minos.Client.new(nodes: [closing, live])

      assert {:ok, %Minos.Session{id: "ABC", owner: 2, status: :placed, state: %{"a" => 1}}} =
               Minos.get(client, "ABC")

      assert_received {:fake_request, p0, %{path: "/v1/sessions/ABC"}}
      assert_received {:fake_request, p1, %{path: "/v1/sessions/ABC"}}
      assert {p0, p1} == {FakeNode.port(0), FakeNode.port(1)}
    end

    test "a keyed call whose connection closed after sending is repeated on the next node with the same key" do
      closing = FakeNode.start(0, fn _ -> :close end)
      live = FakeNode.start(1, fn _ -> {:reply, 200, @call_reply} end)
      client = Minos.Client.new(nodes: [closing, live])

      assert {:ok, %Minos.Reply{owner: 3}} =
               Minos.call(client, "ABC", %{op: "append", field: "f", value: 1})

      assert_received {:fake_request, _, %{headers: %{"idempotency-key" => key}, query: query}}
      assert_received {:fake_request, _, %{headers: %{"idempotency-key" => ^key}}}
      assert query == %{"timeout_ms" => "5000"}
      assert String.length(key) == 22
    end

    test "a call without a key whose connection closed after sending is :outcome_unknown, not repeated" do
      closing = FakeNode.start(0, fn _ -> :close end)
      live = FakeNode.start(1, fn _ -> {:reply, 200, @call_reply} end)
      client = Minos.Client.new(nodes: [closing, live])

      assert {:error, %Error{code: :outcome_unknown, status: nil, message: message}} =
               Minos.call(client, "ABC", %{op: "append", field: "f", value: 1}, key: nil)

      assert message =~ "may or may not have taken effect"
      assert_received {:fake_request, port, %{headers: headers}}
      assert port == FakeNode.port(0)
      refute Map.has_key?(headers, "idempotency-key")
      refute_received {:fake_request, _, _}
    end

    test "a create or a stop whose connection closed after sending is :outcome_unknown" do
      closing = FakeNode.start(0, fn _ -> :close end)
      live = FakeNode.start(1, fn _ -> {:reply, 200, "{}"} end)
      client = Minos.Client.new(nodes: [closing, live])

      assert {:error, %Error{code: :outcome_unknown}} = Minos.start_session(client, "ABC")
      assert {:error, %Error{code: :outcome_unknown}} = Minos.stop_session(client, "ABC")
      assert {:error, %Error{code: :outcome_unknown}} = Minos.drain(client, 1)
      refute_received {:fake_request, 17751, _}
    end

    test "an answer, even 503 unavailable, is never retried on another node" do
      body = ~s({"error": {"code": "unavailable", "message": "session moving"}})
      first = FakeNode.start(0, fn _ -> {:reply, 503, body} end)
      second = FakeNode.start(1, fn _ -> {:reply, 200, @call_reply} end)
      client = Minos.Client.new(nodes: [first, second])

      assert {:error, %Error{code: :unavailable, status: 503}} =
               Minos.call(client, "ABC", %{op: "get"})

      assert_received {:fake_request, _, _}
      refute_received {:fake_request, _, _}
    end

    test "a call's HTTP wait covers its own timeout: a slow answer inside it is not cut" do
      slow =
        FakeNode.start(0, fn _ ->
          # The node holds the call (as while a session moves), then answers.
          receive do
          after
            1_500 -> {:reply, 200, @call_reply}
          end
        end)

      client = Minos.Client.new(nodes: [slow], timeout: 500)
      assert {:ok, %Minos.Reply{}} = Minos.call(client, "ABC", %{op: "get"}, timeout: 2_000)
    end
  end

  test "concurrent calls do not queue behind a slow one on a kept-alive connection" do
    slow =
      FakeNode.start(
        5,
        fn _ ->
          receive do
          after
            1_000 -> {:reply, 200, @call_reply}
          end
        end,
        keep_alive: true
      )

    client = Minos.Client.new(nodes: [slow])
    started = System.monotonic_time(:millisecond)

    results =
      1..6
      |> Enum.map(fn _ -> Task.async(fn -> Minos.call(client, "ABC", %{op: "get"}) end) end)
      |> Enum.map(&Task.await(&1, 10_000))

    elapsed = System.monotonic_time(:millisecond) - started
    assert Enum.all?(results, &match?({:ok, %Minos.Reply{}}, &1))
    # In sequence they would take 6 s.
    assert elapsed < 3_000, "6 concurrent 1 s calls took #{elapsed} ms"
  end

  describe "against the real cluster" do
    setup do
      TestCluster.ensure_started!()
      TestCluster.ensure_all_up!()
    end

    test "first node in the list dead: the cluster still answers through the others" do
      nodes = [FakeNode.dead(0), TestCluster.addr(2), TestCluster.addr(3)]
      client = Minos.Client.new(nodes: nodes, token: TestCluster.token(:client))
      id = "failover-#{System.unique_integer([:positive])}"

      assert {:ok, %Minos.Session{id: ^id}} =
               Minos.start_session(client, id, kind: "kv", state: %{"n" => 1})

      assert {:ok, %Minos.Reply{reply: %{"n" => 1}}} = Minos.call(client, id, %{op: "get"})
      assert {:ok, %Minos.Cluster{leader: leader}} = Minos.cluster(client)
      assert leader in 1..3
      assert Minos.Client.preferred_node(client) == TestCluster.addr(2)
    end

    test "the node the client used is stopped: the next request goes to another node" do
      client = TestCluster.client([3, 2])
      id = "moved-#{System.unique_integer([:positive])}"
      assert {:ok, _} = Minos.start_session(client, id, kind: "kv", state: %{"n" => 2})
      assert Minos.Client.preferred_node(client) == TestCluster.addr(3)

      TestCluster.term!(3)

      assert {:ok, %Minos.Reply{reply: %{"n" => 2}, owner: owner}} =
               Minos.call(client, id, %{op: "get"}, timeout: 10_000)

      assert owner != 3
      assert Minos.Client.preferred_node(client) == TestCluster.addr(2)
    end
  end
end

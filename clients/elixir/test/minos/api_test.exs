defmodule Minos.ApiTest do
  @moduledoc "The whole API against the real cluster, errors included, and pagination."
  use ExUnit.Case, async: false

  alias Minos.{Error, FakeNode, TestCluster}

  setup_all do
    TestCluster.ensure_started!()
  end

  setup do
    TestCluster.ensure_all_up!()
    %{client: TestCluster.client(), admin: TestCluster.client([1, 2, 3], :admin)}
  end

  defp unique(prefix), do: "#{prefix}-#{System.unique_integer([:positive])}"

  test "start, call, get, stop a session", %{client: client, admin: admin} do
    id = unique("api")

    assert {:ok, %Minos.Session{id: ^id, kind: "kv", status: :placed, state: %{"n" => 1}} = s} =
             Minos.start_session(client, id, state: %{n: 1})

    assert %DateTime{} = s.created_at

    assert {:ok, %Minos.Reply{reply: %{"ok" => true}}} =
             Minos.call(client, id, %{op: "merge", value: %{m: 2}})

    assert {:ok, %Minos.Session{state: %{"n" => 1, "m" => 2}, version: version}} =
             Minos.get(client, id)

    assert version >= 1

    assert {:error, %Error{code: :forbidden, status: 403}} = Minos.stop_session(client, id)
    assert {:ok, ^id} = Minos.stop_session(admin, id)
    assert {:error, %Error{code: :not_found, status: 404}} = Minos.get(client, id)
  end

  test "the nodes' own errors arrive as their codes", %{client: client, admin: admin} do
    id = unique("err")
    assert {:ok, _} = Minos.start_session(client, id, kind: "minotaur")

    assert {:error, %Error{code: :exists, status: 409}} = Minos.start_session(client, id)
    assert {:error, %Error{code: :not_found, status: 404}} = Minos.get(client, unique("none"))

    assert {:error, %Error{code: :not_found, status: 404}} =
             Minos.call(client, unique("none"), %{op: "get"})

    assert {:error, %Error{code: :invalid_id, status: 400}} =
             Minos.get(client, String.duplicate("x", 200))

    assert {:error, %Error{code: :unknown_kind, status: 400}} =
             Minos.start_session(client, unique("k"), kind: "chess")

    assert {:error, %Error{code: :rejected, status: 422}} =
             Minos.start_session(client, unique("r"), kind: "minotaur", state: %{round: 0})

    assert {:error, %Error{code: :rejected, status: 422, message: message}} =
             Minos.call(client, id, %{op: "register_action", player: "minos", action: "eat"})

    assert message =~ "has not joined"

    assert {:error, %Error{code: :invalid_key, status: 400}} =
             Minos.call(client, id, %{op: "get_game"}, key: "no spaces")

    assert {:error, %Error{code: :bad_query, status: 400}} = Minos.list_page(client, limit: 0)
    assert {:error, %Error{code: :no_such_node, status: 404}} = Minos.drain(admin, 9)
    assert {:error, %Error{code: :forbidden, status: 403}} = Minos.drain(client, 1)

    big = String.duplicate("x", 1_100_000)

    assert {:error, %Error{code: code, status: 413}} =
             Minos.start_session(client, unique("big"), state: %{v: big})

    assert code in [:state_too_large, :too_large]
  end

  test "the bearer token: none or an unknown one is :unauthorized" do
    for token <- [nil, "not-a-token-of-this-cluster"] do
      client = Minos.Client.new(nodes: [TestCluster.addr(1)], token: token)
      assert {:error, %Error{code: :unauthorized, status: 401}} = Minos.get(client, "ABC")
      assert {:error, %Error{code: :unauthorized, status: 401}} = Minos.cluster(client)
    end

    token_file = Path.join(TestCluster.dir(), "client.token")
    client = Minos.Client.new(nodes: [TestCluster.addr(1)], token_file: token_file)
    assert {:ok, %Minos.Cluster{}} = Minos.cluster(client)
  end

  test "cluster, drain and undrain", %{client: client, admin: admin} do
    assert {:ok, %Minos.Cluster{leader: leader, quorum: true, nodes: nodes}} =
             Minos.cluster(client)

    assert leader in 1..3
    assert Enum.map(nodes, & &1.id) == [1, 2, 3]
    assert Enum.all?(nodes, &(&1.status == :up))

    assert {:ok, %{moved: moved, skipped: 0}} = Minos.drain(admin, 3)
    assert is_integer(moved)
    assert {:ok, %Minos.Cluster{nodes: nodes}} = Minos.cluster(client)
    assert Enum.find(nodes, &(&1.id == 3)).status == :draining
    assert {:ok, %{"status" => "up"}} = Minos.undrain(admin, 3)
  end

  describe "pagination" do
    test "list streams every page in id order", %{client: client} do
      prefix = unique("page")
      ids = for n <- 1..7, do: "#{prefix}-#{n}"
      for id <- ids, do: assert({:ok, _} = Minos.start_session(client, id))

      listed = client |> Minos.list(limit: 2) |> Enum.map(& &1.id)
      assert Enum.filter(listed, &String.starts_with?(&1, prefix <> "-")) == Enum.sort(ids)
      assert listed == Enum.sort(listed)
      assert listed == Enum.uniq(listed)

      # after: starts behind an id; owner: filters.
      [first | rest] = Enum.sort(ids)
      after_first = client |> Minos.list(after: first, limit: 3) |> Enum.map(& &1.id)

      assert Enum.take(Enum.filter(after_first, &String.starts_with?(&1, prefix <> "-")), 6) ==
               rest

      for owner <- 1..3 do
        assert client |> Minos.list(owner: owner, limit: 2) |> Enum.all?(&(&1.owner == owner))
      end

      assert {:ok, %Minos.Page{sessions: [_, _], next: next}} = Minos.list_page(client, limit: 2)
      assert is_binary(next)
    end
  end

  describe "pagination against a fake node" do
    defp page(ids, next) do
      sessions =
        Enum.map(ids, fn id ->
          %{
            "id" => id,
            "kind" => "kv",
            "owner" => 1,
            "epoch" => 1,
            "version" => 0,
            "status" => "placed",
            "state" => nil,
            "created_at" => "2026-01-01T00:00:00Z",
            "updated_at" => "2026-01-01T00:00:00Z"
          }
        end)

      {:ok, body} = Minos.JSON.encode(%{"sessions" => sessions, "next" => next})
      {:reply, 200, body}
    end

    test "pages are fetched lazily, passing next as after" do
      node =
        FakeNode.start(0, fn
          %{query: %{"after" => "b"}} -> page(["c", "d"], "d")
          %{query: %{"after" => "d"}} -> page(["e"], nil)
          %{query: _} -> page(["a", "b"], "b")
        end)

      client = Minos.Client.new(nodes: [node])
      stream = Minos.list(client, owner: 1, limit: 2)
      refute_received {:fake_request, _, _}

      assert stream |> Enum.take(3) |> Enum.map(& &1.id) == ["a", "b", "c"]
      assert_received {:fake_request, _, %{query: %{"owner" => "1", "limit" => "2"} = q1}}
      refute Map.has_key?(q1, "after")
      assert_received {:fake_request, _, %{query: %{"after" => "b"}}}
      refute_received {:fake_request, _, _}

      assert stream |> Enum.map(& &1.id) == ["a", "b", "c", "d", "e"]
    end

    test "a page that fails raises Minos.Error from the stream" do
      body = ~s({"error": {"code": "no_quorum", "message": "no leader"}})
      client = Minos.Client.new(nodes: [FakeNode.start(0, fn _ -> {:reply, 503, body} end)])
      error = assert_raise Error, fn -> client |> Minos.list() |> Enum.to_list() end
      assert %Error{code: :no_quorum, status: 503} = error
    end
  end
end

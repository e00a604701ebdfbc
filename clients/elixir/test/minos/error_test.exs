defmodule Minos.ErrorTest do
  @moduledoc """
  Every error code a node answers (src/api/error.rs, src/api/*.rs) maps to
  its atom and keeps status and message; bad answers become errors, never
  crashes. A fake node answers, so codes a real cluster rarely gives
  (no_quorum, outcome_unknown, internal) are covered too.
  """
  use ExUnit.Case, async: false

  alias Minos.{Error, FakeNode}

  # {code, status} as the nodes answer them.
  @answers [
    {"invalid_input", 400},
    {"invalid_id", 400},
    {"invalid_kind", 400},
    {"unknown_kind", 400},
    {"bad_json", 400},
    {"bad_body", 400},
    {"bad_query", 400},
    {"invalid_key", 400},
    {"invalid_node", 400},
    {"unauthorized", 401},
    {"forbidden", 403},
    {"refused", 403},
    {"not_found", 404},
    {"no_such_node", 404},
    {"no_route", 404},
    {"exists", 409},
    {"stale_epoch", 409},
    {"stale_version", 409},
    {"duplicate_call", 409},
    {"not_allowed", 409},
    {"state_too_large", 413},
    {"too_large", 413},
    {"unsupported_media_type", 415},
    {"rejected", 422},
    {"no_quorum", 503},
    {"unavailable", 503},
    {"outcome_unknown", 503},
    {"internal", 500}
  ]

  test "the table covers every code the client knows" do
    known = Error.server_codes() -- [:request_timeout]

    assert Enum.sort(Enum.map(@answers, fn {code, _} -> String.to_atom(code) end)) ==
             Enum.sort(known)
  end

  for {code, status} <- @answers do
    test "#{status} #{code} is {:error, %Minos.Error{code: :#{code}}} from every call" do
      code = unquote(code)
      status = unquote(status)
      body = ~s({"error": {"code": "#{code}", "message": "the node says #{code}"}})
      client = Minos.Client.new(nodes: [FakeNode.start(0, fn _ -> {:reply, status, body} end)])

      expected = %Error{
        code: String.to_atom(code),
        status: status,
        message: "the node says #{code}"
      }

      assert Minos.get(client, "ABC") == {:error, expected}
      assert Minos.call(client, "ABC", %{op: "get"}) == {:error, expected}
      assert Minos.start_session(client, "ABC", kind: "kv") == {:error, expected}
      assert Minos.stop_session(client, "ABC") == {:error, expected}
      assert Minos.list_page(client) == {:error, expected}
      assert Minos.cluster(client) == {:error, expected}
      assert Minos.drain(client, 2) == {:error, expected}
    end
  end

  test "outcome_unknown is not :unavailable although both are 503, and is not retried" do
    body = ~s({"error": {"code": "outcome_unknown", "message": "the owner went away mid-call"}})
    first = FakeNode.start(0, fn _ -> {:reply, 503, body} end)

    second =
      FakeNode.start(1, fn _ -> {:reply, 200, ~s({"reply": 1, "owner": 2, "epoch": 2})} end)

    client = Minos.Client.new(nodes: [first, second])

    assert {:error, %Error{code: :outcome_unknown, status: 503}} =
             Minos.call(client, "ABC", %{op: "append"})

    assert_received {:fake_request, _, %{path: "/v1/sessions/ABC/call"}}

    refute_received {:fake_request, _, _},
                    "the second node was asked: outcome_unknown was retried"
  end

  test "a code this client does not know stays a string" do
    body = ~s({"error": {"code": "shiny_new_code", "message": "from a newer node"}})
    client = Minos.Client.new(nodes: [FakeNode.start(0, fn _ -> {:reply, 409, body} end)])

    assert {:error, %Error{code: "shiny_new_code", status: 409, message: "from a newer node"}} =
             Minos.get(client, "ABC")
  end

  test "the node's bodiless 408 is :request_timeout" do
    client = Minos.Client.new(nodes: [FakeNode.start(0, fn _ -> {:reply, 408, ""} end)])
    assert {:error, %Error{code: :request_timeout, status: 408}} = Minos.get(client, "ABC")
  end

  test "bad answers are :bad_answer errors, not crashes" do
    for {{status, body}, k} <-
          Enum.with_index([
            {200, "not json"},
            {200, ~s({"unexpected": true})},
            {200, ~s([1, 2, 3])},
            {201, ~s({"id": 5})},
            {500, "<html>oops</html>"},
            {503, ~s({"node": 1, "quorum": false})},
            {404, ~s({"error": "not_found"})},
            {502, ""}
          ]) do
      node = FakeNode.start(k, fn _ -> {:reply, status, body} end)
      client = Minos.Client.new(nodes: [node])

      for result <- [
            Minos.get(client, "ABC"),
            Minos.call(client, "ABC", %{op: "get"}),
            Minos.start_session(client, "ABC"),
            Minos.list_page(client),
            Minos.cluster(client),
            Minos.drain(client, 1)
          ] do
        assert {:error, %Error{code: :bad_answer, status: ^status, message: message}} = result
        assert is_binary(message)
      end
    end
  end

  test "arguments that cannot be sent are refused before sending" do
    client = Minos.Client.new(nodes: [FakeNode.start(0, fn _ -> {:reply, 200, "{}"} end)])

    assert {:error, %Error{code: :invalid_argument, status: nil}} =
             Minos.call(client, "ABC", %{op: "set", value: {:a, :tuple}})

    assert {:error, %Error{code: :invalid_argument}} = Minos.call(client, "ABC", %{}, timeout: 0)

    assert {:error, %Error{code: :invalid_argument}} =
             Minos.call(client, "ABC", %{}, timeout: 60_001)

    assert {:error, %Error{code: :invalid_argument}} = Minos.call(client, "ABC", %{}, key: 42)
    refute_received {:fake_request, _, _}
  end

  test "Minos.Client.new/1 refuses what it cannot use" do
    for nodes <- [[], ["bad host:1"], ["127.0.0.1:7101/path"], [7101]] do
      assert_raise ArgumentError, fn -> Minos.Client.new(nodes: nodes) end
    end

    assert_raise ArgumentError, fn -> Minos.Client.new(nodes: ["a:1"], timeout: 0) end

    assert_raise ArgumentError, fn ->
      Minos.Client.new(nodes: ["a:1"], token_file: "/no/such/file")
    end
  end

  test "Minos.Error is an exception with a readable message" do
    error = %Error{code: :unreachable, message: "no node could be reached", status: nil}
    assert_raise Error, "unreachable: no node could be reached", fn -> raise error end
  end
end

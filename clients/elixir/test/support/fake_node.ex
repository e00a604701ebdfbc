defmodule Minos.FakeNode do
  @moduledoc false
  # A tiny HTTP/1.1 server on 127.0.0.1:PORT that answers every request
  # with what `responder.(request)` returns, and tells the test process
  # about each request: {:fake_request, port, request}.
  #
  #   {:reply, status, body}   an answer (Content-Type: application/json)
  #   :close                   reads the request, closes without answering
  #
  # request: %{method, path, query, headers (lowercase names), body}.
  # An answer closes its connection, unless started with keep_alive: true.

  # Ports 17750.. (the test cluster is on 17701-17703).
  @first_port 17750

  def port(k), do: @first_port + k

  def start(k, responder, opts \\ []) do
    owner = self()
    port = port(k)
    keep_alive = Keyword.get(opts, :keep_alive, false)

    listener = listen(port)

    pid = spawn_link(fn -> accept_loop(listener, {port, owner, responder, keep_alive}) end)
    :ok = :gen_tcp.controlling_process(listener, pid)

    ExUnit.Callbacks.on_exit(fn ->
      # Wait until it is gone (with its listener), so the port is free.
      ref = Process.monitor(pid)
      :gen_tcp.close(listener)
      Process.exit(pid, :kill)

      receive do
        {:DOWN, ^ref, _, _, _} -> :ok
      end
    end)

    "127.0.0.1:#{port}"
  end

  # The previous test's listener on this port may still be closing.
  defp listen(port) do
    options = [:binary, active: false, reuseaddr: true, ip: {127, 0, 0, 1}, packet: :raw]
    me = self()

    Minos.TestCluster.wait_until(2_000, "port #{port} free for a fake node", fn ->
      case :gen_tcp.listen(port, options) do
        {:ok, listener} -> send(me, {:listener, listener})
        {:error, :eaddrinuse} -> false
      end
    end)

    receive do
      {:listener, listener} -> listener
    end
  end

  @doc "A node address where nothing listens (connection refused)."
  def dead(k), do: "127.0.0.1:#{port(k)}"

  defp accept_loop(listener, server) do
    case :gen_tcp.accept(listener) do
      {:ok, socket} ->
        # One process per connection: a slow answer holds up no other.
        # Linked: they end with the fake node, kept-alive connections too.
        handler = spawn_link(fn -> receive(do: (:go -> serve(socket, server))) end)
        :ok = :gen_tcp.controlling_process(socket, handler)
        send(handler, :go)
        accept_loop(listener, server)

      {:error, _} ->
        :ok
    end
  end

  # Serves the requests of one connection (several if kept alive, as a
  # node does) until the client closes it or the responder says :close.
  defp serve(socket, {port, owner, responder, keep_alive} = server) do
    case read_request(socket, "") do
      {:ok, request} ->
        send(owner, {:fake_request, port, request})

        case responder.(request) do
          {:reply, status, body} ->
            head =
              "HTTP/1.1 #{status} Whatever\r\ncontent-type: application/json\r\n" <>
                "content-length: #{byte_size(body)}\r\n" <>
                if(keep_alive, do: "\r\n", else: "connection: close\r\n\r\n")

            :gen_tcp.send(socket, head <> body)
            if keep_alive, do: serve(socket, server), else: :gen_tcp.close(socket)

          :close ->
            :gen_tcp.close(socket)
        end

      _ ->
        :gen_tcp.close(socket)
    end
  end

  defp read_request(socket, acc) do
    case :binary.split(acc, "\r\n\r\n") do
      [head, rest] ->
        [request_line | header_lines] = String.split(head, "\r\n")
        [method, target, _version] = String.split(request_line, " ")

        headers =
          Map.new(header_lines, fn line ->
            [name, value] = String.split(line, ":", parts: 2)
            {String.downcase(name), String.trim(value)}
          end)

        length = String.to_integer(Map.get(headers, "content-length", "0"))

        with {:ok, body} <- read_body(socket, rest, length) do
          uri = URI.parse(target)

          {:ok,
           %{
             method: method,
             path: uri.path,
             query: URI.decode_query(uri.query || ""),
             headers: headers,
             body: body
           }}
        end

      [_] ->
        case :gen_tcp.recv(socket, 0, 5_000) do
          {:ok, data} -> read_request(socket, acc <> data)
          error -> error
        end
    end
  end

  defp read_body(_socket, data, length) when byte_size(data) >= length,
    do: {:ok, binary_part(data, 0, length)}

  defp read_body(socket, data, length) do
    case :gen_tcp.recv(socket, 0, 5_000) do
      {:ok, more} -> read_body(socket, data <> more, length)
      error -> error
    end
  end
end

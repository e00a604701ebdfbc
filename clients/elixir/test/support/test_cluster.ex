defmodule Minos.TestCluster do
  @moduledoc false
  # A real three-node cluster through the repository's scripts/cluster.sh,
  # on its own port base and data directory. The binary: MINOS_BIN if set,
  # else cluster.sh builds target/release/minos (cargo) at the first start.
  # Each node has its Elixir app (Minos.TestApps, kind minotaur_ex), started
  # before the nodes and restarted before them.

  @base 17700
  @root Path.expand("../../../..", __DIR__)
  @script Path.join(@root, "scripts/cluster.sh")
  @dir Path.expand("../../_build/test-cluster", __DIR__)

  def base, do: @base
  def addr(n), do: "127.0.0.1:#{@base + n}"
  def dir, do: @dir

  def token(role), do: File.read!(Path.join(@dir, "#{role}.token")) |> String.trim()

  def client(nodes \\ [1, 2, 3], role \\ :client, opts \\ []) do
    Minos.Client.new([nodes: Enum.map(nodes, &addr/1), token: token(role)] ++ opts)
  end

  @doc "Starts the cluster once per test run (a fresh data directory)."
  def ensure_started! do
    if :persistent_term.get({__MODULE__, :started}, false) do
      :ok
    else
      # Nodes left by an aborted earlier run (their pid files are in @dir).
      cluster_sh(["stop", "--now"])
      File.rm_rf!(@dir)
      File.mkdir_p!(@dir)
      # The apps first: a node whose app does not answer is not ready.
      Minos.TestApps.ensure_started!()
      {out, status} = cluster_sh(["start"])
      if status != 0, do: raise("scripts/cluster.sh start failed:\n#{out}")
      # From now on the binary is known: no cargo run per restart.
      :persistent_term.put({__MODULE__, :bin}, binary())
      :persistent_term.put({__MODULE__, :started}, true)
      ExUnit.after_suite(fn _ -> stop!() end)
      :ok
    end
  end

  def stop!, do: cluster_sh(["stop", "--now"])

  defp binary do
    case System.get_env("MINOS_BIN") do
      bin when is_binary(bin) and bin != "" ->
        bin

      _ ->
        target = Path.expand(System.get_env("CARGO_TARGET_DIR") || "target", @root)
        Path.join(target, "release/minos")
    end
  end

  def running?(n), do: File.exists?(Path.join(@dir, "node#{n}.pid"))

  def term!(n), do: run!(["term", "#{n}"])
  def kill!(n), do: run!(["kill", "#{n}"])
  def restart!(n), do: run!(["restart", "#{n}"])

  defp run!(args) do
    case cluster_sh(args) do
      {_out, 0} ->
        :ok

      {out, status} ->
        raise "scripts/cluster.sh #{Enum.join(args, " ")} exited #{status}:\n#{out}"
    end
  end

  defp cluster_sh(args) do
    env = [
      {"MINOS_PORT_BASE", "#{@base}"},
      {"MINOS_CLUSTER_DIR", @dir},
      {"MINOS_BIN", :persistent_term.get({__MODULE__, :bin}, System.get_env("MINOS_BIN"))},
      {"MINOS_SERVE_FLAGS", Minos.TestApps.serve_flags()}
    ]

    System.cmd("bash", [@script | args], env: env, stderr_to_stdout: true, cd: @root)
  end

  @doc """
  Restarts every stopped app and node (cluster.sh waits for its health)
  and waits, by condition with a deadline, until node 1 sees a quorum and
  every node Up (not draining: a node whose app was gone undrains when it
  answers again), so a new session can be placed on any of them.
  """
  #
  # If the cluster does not come back, the error shows what node 1 saw last,
  # and every later call fails at once with it (instead of each test of the
  # run waiting out the deadline in its turn).
  def ensure_all_up!(timeout_ms \\ 30_000) do
    case :persistent_term.get({__MODULE__, :broken}, nil) do
      nil -> :ok
      why -> raise "the cluster did not come back in an earlier test: #{why}"
    end

    Minos.TestApps.ensure_all_running!()
    for n <- 1..3, not running?(n), do: restart!(n)
    node1 = client([1], :client, timeout: 2_000)

    try do
      wait_until(timeout_ms, "every node Up as node 1 sees it", fn ->
        view = Minos.cluster(node1)
        Process.put({__MODULE__, :last_view}, view)

        case view do
          {:ok, %Minos.Cluster{quorum: true, nodes: nodes}} ->
            length(nodes) == 3 and Enum.all?(nodes, &(&1.status == :up))

          _ ->
            false
        end
      end)
    rescue
      error in RuntimeError ->
        why =
          "#{error.message}; node 1 saw last: " <>
            inspect(Process.get({__MODULE__, :last_view}), limit: :infinity)

        :persistent_term.put({__MODULE__, :broken}, why)
        reraise why, __STACKTRACE__
    end
  end

  @doc "Polls `fun` every 20 ms until it is truthy; raises after `timeout_ms`."
  def wait_until(timeout_ms, what, fun) do
    deadline = System.monotonic_time(:millisecond) + timeout_ms
    poll(deadline, what, fun)
  end

  defp poll(deadline, what, fun) do
    cond do
      fun.() ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        raise "timed out waiting for #{what} (cluster logs: #{@dir}/node*.log)"

      true ->
        Process.sleep(20)
        poll(deadline, what, fun)
    end
  end
end

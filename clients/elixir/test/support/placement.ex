defmodule Minos.TestPlacement do
  @moduledoc false
  # minos's placement (src/placement.rs): rendezvous hashing with 64-bit
  # FNV-1a over the id's bytes and the node id's 8 big-endian bytes, then a
  # splitmix64 finalizer; the node with the highest (hash, id) wins. Used to
  # pick a game id that a three-node cluster places on node 1.
  import Bitwise

  @mask 0xFFFF_FFFF_FFFF_FFFF

  def place(id, nodes), do: Enum.max_by(nodes, &{hash(id, &1), &1})

  def id_on(node, prefix, nodes \\ [1, 2, 3]) do
    Stream.iterate(0, &(&1 + 1))
    |> Stream.map(&"#{prefix}-#{&1}")
    |> Enum.find(&(place(&1, nodes) == node))
  end

  def hash(id, node) do
    bytes = id <> <<node::unsigned-big-64>>

    h =
      for <<byte <- bytes>>, reduce: 0xCBF2_9CE4_8422_2325 do
        h -> bxor(h, byte) * 0x0000_0100_0000_01B3 &&& @mask
      end

    h = bxor(h, h >>> 30) * 0xBF58_476D_1CE4_E5B9 &&& @mask
    h = bxor(h, h >>> 27) * 0x94D0_49BB_1331_11EB &&& @mask
    bxor(h, h >>> 31)
  end
end

defmodule Minos.JSON do
  @moduledoc """
  JSON through Debian's `jiffy` (OTP 25 has no `:json`; see the README).

  Decoding gives maps with string keys and `nil` for `null`. Encoding takes
  maps (atom, string or integer keys), lists, strings, numbers, booleans and
  `nil`; `DateTime`, `NaiveDateTime`, `Date` and `Time` become ISO 8601
  strings, other structs their fields. Anything else (a tuple, a pid) is
  refused with an error instead of a crash.

      iex> Minos.JSON.encode(%{world: nil})
      {:ok, ~s({"world":null})}

      iex> Minos.JSON.encode([1, "two", true, %{3 => :four}])
      {:ok, ~s([1,"two",true,{"3":"four"}])}

      iex> Minos.JSON.decode(~s({"round": 1, "world": null}))
      {:ok, %{"round" => 1, "world" => nil}}

      iex> Minos.JSON.encode(%{at: ~U[2024-06-13 23:18:19.518430Z]})
      {:ok, ~s({"at":"2024-06-13T23:18:19.518430Z"})}

      iex> {:error, message} = Minos.JSON.encode(%{bad: {1, 2}})
      iex> message
      "cannot encode {1, 2} as JSON"

      iex> {:error, message} = Minos.JSON.decode("{nope")
      iex> message =~ "invalid JSON"
      true
  """

  @doc "Encodes `term` as JSON text: `{:ok, binary}` or `{:error, message}`."
  @spec encode(term()) :: {:ok, binary()} | {:error, String.t()}
  def encode(term) do
    {:ok, term |> prepare() |> :jiffy.encode() |> IO.iodata_to_binary()}
  catch
    {:cannot_encode, value} -> {:error, "cannot encode #{inspect(value)} as JSON"}
    :error, reason -> {:error, "cannot encode as JSON: #{inspect(reason)}"}
  end

  @doc "Decodes JSON text: `{:ok, term}` or `{:error, message}`."
  @spec decode(binary()) :: {:ok, term()} | {:error, String.t()}
  def decode(text) when is_binary(text) do
    {:ok, :jiffy.decode(text, [:return_maps, :use_nil])}
  catch
    :error, reason -> {:error, "invalid JSON: #{inspect(reason)}"}
    :throw, reason -> {:error, "invalid JSON: #{inspect(reason)}"}
  end

  defp prepare(nil), do: :null
  defp prepare(value) when is_boolean(value), do: value
  defp prepare(value) when is_atom(value), do: Atom.to_string(value)
  defp prepare(value) when is_binary(value) or is_number(value), do: value
  defp prepare(%DateTime{} = value), do: DateTime.to_iso8601(value)
  defp prepare(%NaiveDateTime{} = value), do: NaiveDateTime.to_iso8601(value)
  defp prepare(%Date{} = value), do: Date.to_iso8601(value)
  defp prepare(%Time{} = value), do: Time.to_iso8601(value)
  defp prepare(%_{} = struct), do: struct |> Map.from_struct() |> prepare()

  defp prepare(map) when is_map(map) do
    Map.new(map, fn {key, value} -> {key(key), prepare(value)} end)
  end

  defp prepare(list) when is_list(list), do: Enum.map(list, &prepare/1)
  defp prepare(other), do: throw({:cannot_encode, other})

  defp key(key) when is_binary(key), do: key
  defp key(key) when is_atom(key), do: Atom.to_string(key)
  defp key(key) when is_integer(key), do: Integer.to_string(key)
  defp key(other), do: throw({:cannot_encode, other})
end

defmodule Minos.DocTest do
  use ExUnit.Case, async: true
  doctest Minos
  doctest Minos.Client
  doctest Minos.Error
  doctest Minos.JSON
end

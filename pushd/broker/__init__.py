"""The broker holds channels, assigns ids and keeps history; the hub fans
messages out to the subscriptions on this process. Nothing here knows HTTP."""

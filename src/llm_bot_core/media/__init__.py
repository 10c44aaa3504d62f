"""Media a user sends besides text: voice and audio, transcribed into the user's message."""

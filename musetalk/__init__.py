"""MuseTalk: model building, checkpoint loading, audio features, avatar preparation and blending."""

"""pinfold.replication"""

"""pinfold.blockstore"""

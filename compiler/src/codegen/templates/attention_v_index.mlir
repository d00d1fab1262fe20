          %{{t}}key = arith.divui %{{t}}w, %{{tag}}cVPR : index
          %{{t}}u = arith.remui %{{t}}w, %{{tag}}cVPR : index
          %{{t}}k1 = arith.addi {{k0}}, %{{t}}key : index
          %{{t}}k = arith.minui %{{t}}k1, %cSk1 : index
          %{{t}}r = arith.muli %{{t}}k, %{{tag}}cVPR : index
          %{{t}}e = arith.addi %{{t}}r, %{{t}}u : index
          %{{t}}x = arith.addi %vwe, %{{t}}e : index
            %st = arith.remui %gi, %cST : index
{{never}}
            %next = scf.if {{active}} -> ({{acc}}) {
              %stb = arith.muli %st, %cSB : index
              %stx = arith.addi %smx, %stb : index
              %wga = arith.constant {{warpgroup_bytes}} : index
              %wgo = arith.muli %wg, %wga : index
              %abase = arith.addi %stx, %wgo : index
              %bbase = arith.addi %stx, %cRO : index
              nvvm.wgmma.fence.aligned
{{steps}}
              nvvm.wgmma.commit.group.sync.aligned
              scf.yield {{result}} : {{acc}}
            } else {
              scf.yield %a : {{acc}}
            }

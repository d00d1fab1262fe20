            %{{o}}ck = arith.constant {{column}} : index
            %{{o}}c = arith.addi %wcol, %{{o}}ck : index
            %{{o}}cin = arith.cmpi ult, %{{o}}c, %cW : index
            %{{o}}in = arith.andi %li{{i}}, %{{o}}cin : i1
